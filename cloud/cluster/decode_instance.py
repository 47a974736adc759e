"""A decode instance: continues many requests at once (continuous batching over the backend's batched decode).

``start`` takes a request after its first token: with the prompt's KV from the prefill instance it
imports it and only feeds the tokens after it; without one (no KV sent, or one that fails to import) it
re-prefills the tokens itself, which is the fallback of a failed transfer. ``poll`` hands the gateway the
tokens made since its last call; ``stop`` and ``cancel`` free the sequence at once.
"""

from __future__ import annotations

import asyncio
import time

from pdlink.cloud.backend import Backend
from pdlink.cloud.cluster.instance import Instance
from pdlink.cloud.cluster.instance_scheduler import DecodeScheduler
from pdlink.cloud.cluster.instance_spec import InstanceSpec
from pdlink.cloud.cluster.jobs import DecodeBatch, DecodeJob
from pdlink.cloud.cluster.kv_link import kv_importer, receive
from pdlink.cloud.outputs import FinishedOutput, TokenOutput
from pdlink.cloud.request import Request


class DecodeInstance(Instance):
    """See the module doc."""

    def __init__(self, spec: InstanceSpec, backend: Backend | None = None):
        super().__init__(spec, backend)
        self._requests: dict[str, tuple[Request, int]] = {}  # key -> (request, protocol index of its output 0)

    def _make_scheduler(self) -> DecodeScheduler:
        return DecodeScheduler(self.backend, self.spec.scheduler_config(), kv_importer(self.backend))

    async def start(self, job: DecodeJob) -> bool:
        """Take ``job`` (False when the batch is full or the instance is closing)."""
        if self._closed or len(self._requests) >= self.spec.capacity or job.key in self._requests:
            return False
        request = Request(job.key, job.tokens, job.max_tokens, job.sampling, job.stop_token_ids,
                          arrival_s=time.perf_counter())
        kv, error = await receive(job.kv)  # the prompt's KV out of the object store (None: re-prefill)
        if self._closed or job.key in self._requests:
            return False
        self._open_queue(job.key)

        def admit(sched: DecodeScheduler):
            verdict = sched.admit(request)
            if verdict.accepted and kv is not None:
                sched.pending[job.key] = kv
            elif verdict.accepted and error:
                sched.failed.add(job.key)
            return verdict

        verdict = self.worker.call(admit)
        if not verdict.accepted:
            self._forget(job.key)
            return False
        self._requests[job.key] = (request, job.first_index)
        return True

    async def poll(self, key: str, wait_s: float = 1.0) -> DecodeBatch:
        """The tokens made since the last poll (waits up to ``wait_s`` for the first); ``reason`` when done."""
        queue = self._queues.get(key)
        if queue is None:
            raise KeyError(f"no request {key!r} on {self.spec.name}")
        entry = self._requests[key]
        outs = []
        try:
            outs.append(await asyncio.wait_for(queue.get(), wait_s))
        except (TimeoutError, asyncio.TimeoutError):
            pass
        while not queue.empty():
            outs.append(queue.get_nowait())
        request, offset = entry
        tokens = tuple((offset + o.index, o.token_id, o.time_s) for o in outs if isinstance(o, TokenOutput))
        done = next((o for o in outs if isinstance(o, FinishedOutput)), None)
        imported = self.worker.call(lambda s: "kv" if key in s.imported else "failed" if key in s.failed
                                    else "reprefill")
        if done is None:
            return DecodeBatch(tokens, None, request.busy_s, imported)
        self._release(key)
        return DecodeBatch(tokens, done.status.done_reason, done.busy_s, imported)

    async def stop(self, key: str, after_index: int) -> None:
        """The device needs no token past protocol index ``after_index``."""
        entry = self._requests.get(key)
        if entry is not None:
            self.worker.stop(key, max(0, after_index - entry[1]))

    async def cancel(self, key: str) -> float:
        """End the request now; returns its busy seconds here."""
        entry = self._requests.get(key)
        busy = self.worker.cancel(entry[0]) if entry is not None else 0.0
        self._release(key)
        return busy

    def _release(self, key: str) -> None:
        self._requests.pop(key, None)
        self._forget(key)
        self.worker.call(lambda s: (s.imported.discard(key), s.failed.discard(key), s.pending.pop(key, None)))
