"""A fake :class:`Backend` for scheduler and server tests: deterministic logits, a fake clock, every call
recorded, and a fake tokenizer (one letter per token)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pdlink.cloud.backend import Backend, BackendError

VOCAB = 97


def next_token(tokens: Sequence[int]) -> int:
    """The fake model's greedy next token after ``tokens``."""
    return (sum(tokens) * 31 + len(tokens) * 7) % VOCAB


def continuation(prompt: Sequence[int], n: int) -> list[int]:
    """What a correct scheduler must stream for ``prompt`` (greedy, ignoring stop tokens)."""
    seq, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(seq))
        seq.append(out[-1])
    return out


class FakeTokenizer:
    """Token t reads as one letter; text encodes char by char into ids 1..VOCAB-1 (0 is the fake EOS)."""

    hash = "fake-tokenizer"

    def encode(self, text: str) -> list[int]:
        return [1 + ord(c) % (VOCAB - 1) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(ord("a") + t % 26) for t in ids)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeBackend(Backend):
    """Prefill costs ``prefill_s_per_token`` per token and decode ``decode_s`` per step on the fake clock."""

    def __init__(self, clock: FakeClock, max_sequences: int = 8, context_window: int = 4096,
                 prefill_s_per_token: float = 0.001, decode_s: float = 0.02):
        self.clock, self.max_sequences, self.context_window = clock, max_sequences, context_window
        self.prefill_s_per_token, self.decode_s = prefill_s_per_token, decode_s
        self.model_id, self.vocab_size, self.eos_token_ids, self.info = "fake", VOCAB, (0,), {"backend": "fake"}
        self.tokenizer = FakeTokenizer()
        self.seqs: dict[int, list[int]] = {}
        self.prefill_calls: list[dict[int, int]] = []  # seq id -> chunk length, per call
        self.decode_calls: list[list[int]] = []
        self.freed: list[int] = []
        self.fail_next = False
        self._next = 0

    @property
    def num_sequences(self) -> int:
        return len(self.seqs)

    def add_sequence(self) -> int:
        if len(self.seqs) >= self.max_sequences:
            raise BackendError("full")
        self._next += 1
        self.seqs[self._next] = []
        return self._next

    def free_sequence(self, seq_id: int) -> None:
        del self.seqs[seq_id]
        self.freed.append(seq_id)

    def _logits(self, seq_id: int) -> np.ndarray:
        row = np.zeros(VOCAB, dtype=np.float32)
        row[next_token(self.seqs[seq_id])] = 1.0
        return row

    def prefill(self, chunks):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("fake backend failure")
        self.prefill_calls.append({s: len(c) for s, c in chunks.items()})
        for s, chunk in chunks.items():
            if not chunk:
                raise ValueError("empty chunk")
            self.seqs[s].extend(chunk)
            self.clock.now += self.prefill_s_per_token * len(chunk)
        return {s: self._logits(s) for s in chunks}

    def decode(self, seq_ids, token_ids):
        self.decode_calls.append(list(seq_ids))
        for s, t in zip(seq_ids, token_ids):
            self.seqs[s].append(int(t))
        self.clock.now += self.decode_s
        return np.stack([self._logits(s) for s in seq_ids])
