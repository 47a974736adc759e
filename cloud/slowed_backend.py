"""A slower cloud, emulated: a ``Backend`` whose every model call takes at least ``min_call_s``.

For tests and benchmarks that need a busier or slower cloud than this machine's (``--min-step-s``), the way
``pdlink.edge.emulation.EmulatedDevice`` emulates a slower device: the wrapped backend computes every call,
then the rest of ``min_call_s`` is waited out, so the scheduler measures (and bills as busy) the slower time.
It lives beside the real backends and wraps them from outside; the serving path never asks which it has.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from pdlink.cloud.backend import Backend


class SlowedBackend(Backend):
    """``backend`` with each ``prefill`` and ``decode`` call held to at least ``min_call_s``."""

    def __init__(self, backend: Backend, min_call_s: float, *, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        if min_call_s < 0:
            raise ValueError(f"min_call_s must be >= 0, got {min_call_s}")
        self.inner, self.min_call_s, self._clock, self._sleep = backend, min_call_s, clock, sleep
        self.model_id, self.tokenizer, self.vocab_size = backend.model_id, backend.tokenizer, backend.vocab_size
        self.eos_token_ids, self.max_sequences = backend.eos_token_ids, backend.max_sequences
        self.context_window, self.numerics = backend.context_window, backend.numerics
        self.supports_refinement, self.supports_kv_transfer = backend.supports_refinement, backend.supports_kv_transfer
        self.info = {**backend.info, "min_call_s": min_call_s, "emulated": "slowed"}

    def _held(self, call):
        t0 = self._clock()
        out = call()
        rest = self.min_call_s - (self._clock() - t0)
        if rest > 0:
            self._sleep(rest)
        return out

    def prefill(self, chunks: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        return self._held(lambda: self.inner.prefill(chunks))

    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        return self._held(lambda: self.inner.decode(seq_ids, token_ids))

    def add_sequence(self) -> int:
        return self.inner.add_sequence()

    def free_sequence(self, seq_id: int) -> None:
        self.inner.free_sequence(seq_id)

    def track_attention(self, seq_id: int, window: int) -> None:
        self.inner.track_attention(seq_id, window)

    def prompt_importance(self, seq_id: int) -> np.ndarray:
        return self.inner.prompt_importance(seq_id)

    def export_kv(self, seq_id: int):
        return self.inner.export_kv(seq_id)

    def import_kv(self, snapshot) -> int:
        return self.inner.import_kv(snapshot)

    @property
    def num_sequences(self) -> int:
        return self.inner.num_sequences

    def close(self) -> None:
        self.inner.close()
