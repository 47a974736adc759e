"""The shared engine of the assistant: the thread shell around ``BatchCore``.

``BatchingEngine`` looks like an ``Engine`` to a ``Session`` (``prefill``, ``decode``, sequences, tokenizer),
but many sessions use it at once: each session's engine thread hands its call in and waits; one model thread
runs the steps ``BatchCore`` picks, the waiting decodes of all requests as one ``Engine.batch_decode``, and
prompts in chunks of ``prefill_chunk`` tokens between them (chunked prefill: a long prompt delays the others'
next tokens by one chunk, not by the whole prompt). The
sequence calls (add, remove, rollback) take the same lock as a step, so nothing touches the KV cache while a
step runs.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from pdlink.assistant.batch_core import DECODE, BatchCore, Step, Work
from pdlink.edge.engine import PromptTooLongError


class EngineClosedError(RuntimeError):
    """The assistant is shutting down: no more engine steps."""


class BatchingEngine:
    """An ``Engine`` shared by concurrent requests, with their decodes batched (see the module docstring)."""

    def __init__(self, engine, max_batch: int = 8, prefill_chunk: int = 64):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.engine, self.prefill_chunk = engine, prefill_chunk
        self.core = BatchCore(max_batch)
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # held while the engine runs a step or changes a sequence
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="pdlink-batch", daemon=True)
        self._thread.start()

    # what a Session reads of its engine (``pdlink.edge.device_engine.DeviceEngine``): the shared engine's
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_config(self):
        return self.engine.model_config

    @property
    def context_window(self) -> int:
        return self.engine.context_window

    @property
    def num_threads(self) -> int:
        return self.engine.num_threads

    @property
    def manifest(self):
        return self.engine.manifest

    # ------------------------------------------------------------------ sequences (under the step lock)

    def add_sequence(self) -> int:
        with self._lock:
            return self.engine.add_sequence()

    def fork_sequence(self, parent: int, num_tokens: int) -> int:
        with self._lock:
            return self.engine.fork_sequence(parent, num_tokens)

    def remove_sequence(self, seq_id: int) -> None:
        with self._cond:
            for work in self.core.drop(seq_id):
                work.ticket.set_exception(KeyError(f"sequence {seq_id} was removed"))
        with self._lock:
            self.engine.remove_sequence(seq_id)

    def rollback(self, seq_id: int, num_tokens: int) -> None:
        with self._lock:
            self.engine.rollback(seq_id, num_tokens)

    def num_computed_tokens(self, seq_id: int) -> int:
        return self.engine.num_computed_tokens(seq_id)

    @property
    def sequences(self) -> tuple[int, ...]:
        return self.engine.sequences

    # ------------------------------------------------------------------ steps (batched on the model thread)

    def decode(self, seq_id: int, token_id: int) -> np.ndarray:
        """Append one token; waits for the batch it runs in; logits for the next token."""
        return self._submit(Work(DECODE, seq_id, (int(token_id),)))

    def decode_greedy(self, seq_id: int, token_id: int) -> int:
        """:meth:`decode` in the shared batch, then the greedy token (the batch's logits are already copied out)."""
        return int(np.argmax(self.decode(seq_id, token_id)))

    def prefill(self, seq_id: int, token_ids) -> np.ndarray:
        """Append tokens in chunks of ``prefill_chunk``, each run alone between decode batches (so another
        request's stream waits at most one chunk); logits after the last token."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        for start in range(0, len(ids), self.prefill_chunk):
            logits = self._submit(Work("prefill", seq_id, tuple(ids[start:start + self.prefill_chunk])))
        return logits

    def _submit(self, work: Work) -> np.ndarray:
        work.ticket = Future()
        with self._cond:
            if self._closing:
                raise EngineClosedError("the assistant is shutting down")
            self.core.submit(work)
            self._cond.notify()
        return work.ticket.result()

    def close(self) -> None:
        """Stop the model thread after the step it runs; calls still waiting fail with EngineClosedError."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self.core.waiting:
                    self._cond.wait()
                if self._closing:
                    while (step := self.core.next_step()) is not None:
                        for w in step.works:
                            w.ticket.set_exception(EngineClosedError("the assistant is shutting down"))
                    return
                step = self.core.next_step()
            with self._lock:
                self._run(step)

    def _run(self, step: Step) -> None:
        if step.kind != DECODE:
            work = step.works[0]
            _settle([work], lambda: [self.engine.prefill(work.seq, list(work.token_ids))])
            return
        fits = [w for w in step.works if self._fits(w)]
        _settle(fits, lambda: list(self.engine.batch_decode([w.seq for w in fits], [w.token_ids[0] for w in fits])))

    def _fits(self, work: Work) -> bool:
        """A row that would outgrow the context window fails alone instead of failing the batch."""
        try:
            if self.engine.num_computed_tokens(work.seq) + 1 <= self.engine.context_window:
                return True
            work.ticket.set_exception(PromptTooLongError(f"sequence {work.seq} is at the context window"))
        except KeyError as exc:
            work.ticket.set_exception(exc)
        return False


def _settle(works: list[Work], compute) -> None:
    """Run ``compute`` (one result per work) and hand each waiting caller its row or the error."""
    if not works:
        return
    try:
        rows = compute()
    except Exception as exc:  # noqa: BLE001 -- handed to the callers' threads
        for w in works:
            w.ticket.set_exception(exc)
        return
    for w, row in zip(works, rows):
        w.ticket.set_result(row)
