"""A prefill instance: prefills prompts in a batch, samples each first token, exports the KV.

P/D-Serve's rule: **no local queue**. ``offer`` accepts a request only while a batch slot is free and
rejects at once otherwise (the gateway offers it to the next instance); the slot stays taken until the
request's KV has left (``result`` hands it over). With ``max_queue`` > 0 (the queue-report baseline
only) the instance also queues that many requests, as a classic instance would.
"""

from __future__ import annotations

import time
from typing import Any

from pdlink.cloud.backend import Backend
from pdlink.cloud.cluster.instance import Instance
from pdlink.cloud.cluster.instance_scheduler import PrefillScheduler
from pdlink.cloud.cluster.jobs import PrefillJob, PrefillResult
from pdlink.cloud.cluster.kv_link import kv_exporter, ship
from pdlink.cloud.cluster.instance_spec import InstanceSpec
from pdlink.cloud.outputs import FinishedOutput, TokenOutput
from pdlink.cloud.request import Request


class PrefillInstance(Instance):
    """See the module doc. ``offer`` then ``result``; ``cancel`` frees the slot at once."""

    def __init__(self, spec: InstanceSpec, backend: Backend | None = None):
        super().__init__(spec, backend)
        self._requests: dict[str, Request] = {}
        self.offers = self.rejected = 0

    def _make_scheduler(self) -> PrefillScheduler:
        return PrefillScheduler(self.backend, self.spec.scheduler_config(), kv_exporter(self.backend))

    async def offer(self, job: PrefillJob) -> bool:
        """Accept ``job`` when a slot (or, for the baseline, a queue place) is free; else False at once."""
        self.offers += 1
        if self._closed or len(self._requests) >= self.spec.capacity or job.key in self._requests:
            self.rejected += 1
            return False
        request = Request(job.key, job.prompt, 1, job.sampling, job.stop_token_ids, arrival_s=time.perf_counter())
        self._open_queue(job.key)
        if job.export_kv:
            self.scheduler_call(lambda s: s.wanted.add(job.key))
        verdict = self.worker.admit(request)  # raises ValueError for a prompt past the context window
        if not verdict.accepted:
            self._forget(job.key)
            self.rejected += 1
            return False
        self._requests[job.key] = request
        return True

    async def result(self, key: str) -> PrefillResult:
        """Wait for the request's first token (and its KV); the slot is free once this returns."""
        queue = self._queues.get(key)
        if queue is None:
            raise KeyError(f"no request {key!r} on {self.spec.name}")
        token: TokenOutput | None = None
        try:
            while True:
                out = await queue.get()
                if isinstance(out, TokenOutput):
                    token = out
                elif isinstance(out, FinishedOutput):
                    break
            kv, error = self.scheduler_call(lambda s: s.exports.pop(key, (None, "")))
            reason = out.status.done_reason
            if token is None:
                raise RuntimeError(f"prefill of {key!r} ended without a token ({reason})")
            return PrefillResult(key, token.token_id, token.time_s, reason if reason != "max_leading_tokens" else None,
                                 out.busy_s, ship(kv), error)
        finally:
            self._release(key)

    async def cancel(self, key: str) -> None:
        """Drop the request now (the device left, or the gateway gave it to another instance)."""
        request = self._requests.get(key)
        if request is not None:
            self.worker.cancel(request)
        self._release(key)

    async def stats(self) -> dict:
        stats = await super().stats()
        return {**stats, "slots": self.spec.slots, "offers": self.offers, "rejected": self.rejected}

    def _release(self, key: str) -> None:
        self._requests.pop(key, None)
        self._forget(key)
        self.scheduler_call(lambda s: (s.wanted.discard(key), s.exports.pop(key, None)))

    def scheduler_call(self, fn) -> Any:
        """Run ``fn(scheduler)`` under the model worker's lock (its export bookkeeping)."""
        return self.worker.call(fn)
