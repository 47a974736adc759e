"""A multi-turn conversation over a session: each turn prefills only what the KV cache lacks."""

from __future__ import annotations

from typing import Iterator

from pdlink.edge.session import Session
from pdlink.edge.session_run import SessionToken


class Conversation:
    """The messages of one conversation; every turn is a session request in any mode, and the device's
    KV cache of the earlier turns is reused (prefix reuse), so only the new turn is prefilled."""

    def __init__(self, session: Session, system_prompt: str | None = None):
        self.session = session
        self.messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.last = None

    def ask(self, user_message: str, **request) -> Iterator[SessionToken]:
        """Stream the reply to ``user_message`` (``request``: ``GenerationRequest`` fields); the reply joins the
        conversation at the end and its record is ``last``."""
        self.messages.append({"role": "user", "content": user_message})
        tok = self.session.tokenizer
        ids = tok.encode(tok.apply_chat_template(self.messages, add_generation_prompt=True))
        yield from self.session.generate(ids, reuse_kv=True, **request)
        self.last = self.session.last
        self.messages.append({"role": "assistant", "content": self.last.text})

    def close(self) -> None:
        """Forget the conversation's KV cache."""
        self.session.release_kv()


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
