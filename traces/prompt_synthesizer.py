"""Prompt token ids for trace requests, cut from real text (Python's reference docs) to the exact lengths of the
trace, with Mooncake's shared prefixes kept: requests whose leading hash ids are equal get identical leading
tokens for those blocks."""

from __future__ import annotations

import math
import random
from typing import Iterable, Protocol

from pdlink.traces.request import MOONCAKE_BLOCK_TOKENS, TraceRequest


class TextTokenizer(Protocol):
    """What the synthesizer needs of a tokenizer (``pdlink.common.tokenizer.Tokenizer`` has it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class PromptSynthesizer:
    """Builds prompts of exactly ``request.input_tokens`` tokens (the real text is tokenized once, then cut).

    Hash id ``h`` at position ``i`` of a request stands for tokens ``[i*block_tokens, (i+1)*block_tokens)``; its
    block is a fixed window of the text chosen by ``h`` and ``seed``, so equal leading hash ids give equal leading
    tokens. Tokens past the hash-id blocks (and whole prompts of traces without hash ids) come from a window chosen
    by the request's index, so distinct requests (fewer than the text has tokens) start at distinct places of the
    text (short prompts can still match where the docs repeat a passage). Deterministic
    for a given tokenizer, ``seed`` and request order. Decoding the ids and encoding the text again may change
    the length slightly where cuts split a word (see :meth:`texts`)."""

    def __init__(self, tokenizer: TextTokenizer, *, seed: int = 0, block_tokens: int = MOONCAKE_BLOCK_TOKENS,
                 text_chars: int = 1_000_000):
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.tokenizer, self.seed, self.block_tokens, self.text_chars = tokenizer, seed, block_tokens, text_chars
        self._text_ids: list[int] | None = None
        self._step = 0

    def token_ids(self, request: TraceRequest, index: int) -> list[int]:
        """The prompt of ``request``, the ``index``-th of its workload: ``request.input_tokens`` token ids."""
        n, ids = request.input_tokens, []
        for h in request.hash_ids[:math.ceil(n / self.block_tokens)]:
            ids += self._window("block", h, self.block_tokens)
        if len(ids) < n:
            ids += self._window("request", index, n - len(ids))
        return ids[:n]

    def prompts(self, requests: Iterable[TraceRequest]) -> list[list[int]]:
        """Token ids of every request, in order."""
        return [self.token_ids(r, i) for i, r in enumerate(requests)]

    def texts(self, requests: Iterable[TraceRequest]) -> list[str]:
        """The prompts as text, for servers that tokenize themselves; re-encoded, each is within about 2% of its
        length (a cut may split a word at each block boundary and at both ends)."""
        return [self.tokenizer.decode(ids) for ids in self.prompts(requests)]

    def _ids(self) -> list[int]:
        if self._text_ids is None:
            from pdlink.common.real_text import real_text

            ids = self.tokenizer.encode(real_text(self.text_chars))
            if not ids:
                raise ValueError("the tokenizer turned the real text into no tokens")
            step = max(1, int(len(ids) * 0.618))  # golden-ratio stride: neighbouring keys start far apart
            while math.gcd(int(step), len(ids)) != 1:
                step += 1
            self._text_ids, self._step = ids, int(step)
        return self._text_ids

    def _window(self, kind: str, key: int, n: int) -> list[int]:
        """``n`` tokens of the text from a start fixed by ``kind``, ``key`` and the seed (wrapping around); distinct
        keys below the text's length get distinct starts."""
        text = self._ids()
        offset = random.Random(f"{self.seed}:{kind}").randrange(len(text))
        start, out = (offset + key * self._step) % len(text), []
        while len(out) < n:
            out += text[start:start + n - len(out)]
            start = 0
        return out


def synthesize_prompts(requests: Iterable[TraceRequest], tokenizer: TextTokenizer, *, seed: int = 0,
                       block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> list[list[int]]:
    """Token ids of exactly each request's ``input_tokens``, cut from real text; see :class:`PromptSynthesizer`."""
    return PromptSynthesizer(tokenizer, seed=seed, block_tokens=block_tokens).prompts(requests)
