"""The model worker: one thread that owns the backend and steps the scheduler.

The asyncio side never calls the backend and never reads the scheduler or a live request. It sends
commands (``admit``, ``stop``, ``cancel``) that take effect on the scheduler's bookkeeping at once
(under a lock) and wake the thread, and reads ``stats()``, a frozen snapshot taken under the same lock.
The thread frees sequences, plans a step, computes it without the lock (backend calls release the
GIL), then accounts for it and hands the frozen outputs to ``on_outputs`` (called from the worker thread).
A slower cloud is emulated by the backend it runs (``pdlink.cloud.slowed_backend``), not here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable, TypeVar

from pdlink.cloud.admission import Admission
from pdlink.cloud.outputs import Output
from pdlink.cloud.request import Request
from pdlink.cloud.scheduler import Scheduler, SchedulerStats, StepResult

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelWorker:
    """Thread-safe front of a :class:`Scheduler`; ``start()`` it, ``close()`` it."""

    def __init__(self, scheduler: Scheduler, on_outputs: Callable[[list[Output]], None]):
        self._scheduler = scheduler
        self._on_outputs = on_outputs
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="pdlink-model-worker", daemon=True)

    def warm_up(self, prompt_token_ids: list[int], max_tokens: int = 4) -> None:
        """Run one request through the scheduler before ``start()``: compiles kernels, pages in the weights,
        and measures the prefill speed that admission control starts from."""
        sched = self._scheduler
        for attempt in range(2):  # the first pass pays one-time costs; only the second one is measured
            sched.admission.prefill_measured = False
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

    def admit(self, request: Request) -> Admission:
        """Admit or refuse a request in one step (``Scheduler.admit``); an accepted one is queued.
        Raises ValueError as ``Scheduler.add`` does."""
        with self._wake:
            verdict = self._scheduler.admit(request)
            self._wake.notify()
            return verdict

    def stop(self, key: Hashable, after_index: int) -> None:
        with self._wake:
            self._scheduler.stop(key, after_index)
            self._wake.notify()

    def cancel(self, request: Request, disconnected: bool = False) -> float:
        """End ``request`` unless it has ended already; returns its backend seconds so far (read under the
        lock, since a step that ran it may still be accounting for it)."""
        with self._wake:
            if self._scheduler.get(request.key) is request:
                self._scheduler.cancel(request.key, disconnected)
            self._wake.notify()  # wakes an idle worker so the sequence is freed now, not at the next request
            return request.busy_s

    def call(self, fn: Callable[[Scheduler], T]) -> T:
        """``fn(scheduler)`` under the lock (bookkeeping a scheduler subclass keeps beside its requests)."""
        with self._wake:
            result = fn(self._scheduler)
            self._wake.notify()
            return result

    def stats(self) -> SchedulerStats:
        """A consistent snapshot for /healthz and /metrics."""
        with self._lock:
            return self._scheduler.stats()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        sched = self._scheduler
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
