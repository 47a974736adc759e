"""The model worker: one thread that owns the backend and steps the scheduler.

The asyncio side never calls the backend. It sends commands (``submit``, ``stop``, ``cancel``) that
take effect on the scheduler's bookkeeping at once (under a lock) and wake the thread; the thread
frees sequences, plans a step, computes it without the lock (backend calls release the GIL), then
accounts for it and hands the outputs to ``on_outputs`` (called from the worker thread).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Hashable

from pdlink.cloud.request import Request
from pdlink.cloud.scheduler import FinishedOutput, RefinedOutput, Scheduler, TokenOutput

log = logging.getLogger(__name__)

Outputs = list[TokenOutput | FinishedOutput | RefinedOutput]


class ModelWorker:
    """Thread-safe front of a :class:`Scheduler`; ``start()`` it, ``close()`` it."""

    def __init__(self, scheduler: Scheduler, on_outputs: Callable[[Outputs], None]):
        self.scheduler = scheduler
        self._on_outputs = on_outputs
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="pdlink-model-worker", daemon=True)

    def warm_up(self, prompt_token_ids: list[int], max_tokens: int = 4) -> None:
        """Run one request through the scheduler before ``start()``: compiles kernels, pages in the weights,
        and measures the prefill speed that admission control starts from."""
        sched = self.scheduler
        for attempt in range(2):  # the first pass pays one-time costs; only the second one is measured
            sched.prefill_measured = False
            req = Request(("warm-up", attempt), prompt_token_ids, max_tokens)
            sched.add(req)
            while not req.status.finished or sched.has_work:
                sched.step()
        sched.busy_s, sched.steps = 0.0, 0  # serving figures start at zero

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the worker thread runs (a server whose worker died reports itself unhealthy)."""
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current step."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ commands (any thread)

    def can_accept(self, prompt_tokens: int) -> tuple[bool, float]:
        with self._lock:
            return self.scheduler.can_accept(prompt_tokens)

    def submit(self, request: Request) -> None:
        """Queue an admitted request. Raises ValueError as ``Scheduler.add`` does."""
        with self._wake:
            self.scheduler.add(request)
            self._wake.notify()

    def stop(self, key: Hashable, after_index: int) -> Request | None:
        with self._wake:
            req = self.scheduler.stop(key, after_index)
            self._wake.notify()
            return req

    def cancel(self, key: Hashable, disconnected: bool = False) -> Request | None:
        with self._wake:
            req = self.scheduler.cancel(key, disconnected)
            self._wake.notify()  # wakes an idle worker so the sequence is freed now, not at the next request
            return req

    def snapshot(self) -> dict:
        """Gauges for /healthz and /metrics."""
        with self._lock:
            s = self.scheduler
            return {"requests_live": s.num_live, "queued": s.num_queued, "decoding": s.num_decoding,
                    "kv_sequences": s.backend.num_sequences, "prefill_tok_s": s.prefill_tok_s,
                    "decode_step_s": s.decode_step_s, "busy_s": s.busy_s, "steps": s.steps}

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        sched = self.scheduler
        while True:
            with self._wake:
                while not self._closing and not sched.has_work:
                    self._wake.wait()
                if self._closing:
                    return
                plan = sched.schedule()
            if plan is None:
                continue
            try:
                result = sched.execute(plan)
                with self._lock:
                    outputs = sched.update(plan, result)
            except Exception as exc:  # end the step's requests, keep serving the rest
                log.exception("model step failed")
                with self._lock:
                    outputs = sched.fail(plan, exc)
            if outputs:
                try:
                    self._on_outputs(outputs)
                except Exception:
                    log.exception("delivering outputs failed")
