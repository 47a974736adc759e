"""An engine stand-in for the assistant's unit tests: the fake model of the cloud's fake backend, with the
sequence and batch calls the assistant makes (no TVM, no model)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from tests.unit.cloud.fake_backend import VOCAB
from tests.unit.edge.test_session_shell import FakeEngine


@dataclass(frozen=True)
class FakeModelConfig:
    eos_token_ids: tuple[int, ...] = (0,)
    vocab_size: int = VOCAB


class BatchFakeEngine(FakeEngine):
    """``FakeEngine`` plus ``batch_decode`` (recording each batch's size), ``fork_sequence`` and ``sequences``;
    ``gate``, when set, holds the first batched step until it is released."""

    def __init__(self, context_window: int = 512):
        super().__init__(context_window)
        self.model_config = FakeModelConfig()
        self.batches: list[int] = []
        self.gate: threading.Event | None = None

    @property
    def sequences(self) -> tuple[int, ...]:
        return tuple(self.seqs)

    def fork_sequence(self, parent: int, num_tokens: int) -> int:
        child = self.add_sequence()
        self.seqs[child] = list(self.seqs[parent][:num_tokens])
        return child

    def batch_decode(self, seq_ids: list[int], token_ids: list[int]) -> np.ndarray:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            gate.wait(10)
        self.batches.append(len(seq_ids))
        return np.stack([self.decode(s, t) for s, t in zip(seq_ids, token_ids)])
