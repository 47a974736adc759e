"""A multi-turn chat over one engine sequence: each turn prefills only what the KV cache lacks."""

from __future__ import annotations

from typing import Iterator

from pdlink.edge.engine import Engine
from pdlink.edge.generator import Generation, GenerationConfig, TokenEvent


class ChatSession:
    """Conversation state: the messages and the token ids already in the engine's KV cache."""

    def __init__(self, engine: Engine, cfg: GenerationConfig, system_prompt: str | None = None):
        self.engine, self.cfg = engine, cfg
        self.messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self._seq = engine.add_sequence()
        self._cached: list[int] = []  # token ids whose KV is in the sequence

    def ask(self, user_message: str) -> Iterator[TokenEvent]:
        """Stream the reply to ``user_message``; the reply is added to the conversation at the end."""
        self.messages.append({"role": "user", "content": user_message})
        tok = self.engine.tokenizer
        ids = tok.encode(tok.apply_chat_template(self.messages, add_generation_prompt=True))
        common = common_prefix_length(self._cached, ids)
        if common == len(ids):  # prefill needs at least one new token
            common -= 1
        self.engine.rollback(self._seq, len(self._cached) - common)
        gen = Generation(self.engine, ids[common:], self.cfg, seq_id=self._seq)
        yield from gen
        self.last = gen.result
        # The last sampled token was never fed back, so the cache holds everything before it.
        self._cached = ids + gen.result.token_ids[:-1] if gen.result.token_ids else ids
        self.messages.append({"role": "assistant", "content": gen.result.text})
        self.tail_text = gen.tail_text

    def close(self) -> None:
        self.engine.remove_sequence(self._seq)


def user_lines(prompt: str = "> ") -> Iterator[str]:
    """Lines the user types, stripped, until an empty line or end of input."""
    while True:
        try:
            line = input(prompt).strip()
        except EOFError:
            return
        if not line:
            return
        yield line


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
