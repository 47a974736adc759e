"""Tokenizer of a package: HF ``tokenizers`` file + the model's chat template (rendered with jinja2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Tokenizer:
    """Encode/decode text and render chat messages exactly as the model was trained to see them."""

    def __init__(self, tokenizer_file: str | Path, info: dict):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(tokenizer_file))
        self.info = info
        self.hash = hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(info["chat_template"])

    def to_json(self) -> str:
        """The tokenizer file's content (another process rebuilds the same tokenizer from it)."""
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (list of ``{"role", "content"}``)."""
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.info.get("bos_token") or "",
            eos_token=self.info.get("eos_token") or "",
        )

    def encode_chat(self, user_message: str) -> list[int]:
        """Token ids of one user message wrapped in the chat template, ready for the reply."""
        return self.encode(self.apply_chat_template([{"role": "user", "content": user_message}]))


def _raise_template_error(message: str):
    raise jinja2.TemplateError(message)


class StreamingDetokenizer:
    """Turns a growing list of token ids into text pieces without ever emitting broken UTF-8.

    A token may end inside a multi-byte character; its text is held back until the character is
    complete. Call ``add`` per token; ``flush`` at the end returns whatever is still held.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the window re-decoded for context
        self._read_offset = 0  # ids before this are already emitted as text

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (may be empty)."""
        self._ids.append(token_id)
        prefix = self._tok.decode(self._ids[self._prefix_offset : self._read_offset], self._skip)
        full = self._tok.decode(self._ids[self._prefix_offset :], self._skip)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full[len(prefix) :]

    def flush(self) -> str:
        """Text of tokens still held back (incomplete characters are emitted as-is)."""
        prefix = self._tok.decode(self._ids[self._prefix_offset : self._read_offset], self._skip)
        full = self._tok.decode(self._ids[self._prefix_offset :], self._skip)
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix) :]


def end_of_turn_ids(model_eos_ids, tokenizer: Tokenizer) -> set[int]:
    """The tokens that end an answer: the model config's EOS ids plus the tokenizer's ``eos_token``."""
    ids = {int(t) for t in model_eos_ids}
    eos = tokenizer.token_id(tokenizer.info.get("eos_token") or "")
    if eos is not None:
        ids.add(eos)
    return ids
