"""What prefill and decode instances share: the backend, its model worker, and the way outputs reach callers.

An instance is a plain object with ``async`` methods: in one process the gateway awaits them directly; on
Ray the same class is an async actor (``cloud/cluster/runtime.py``) and the gateway awaits its remote
calls. The model worker (``cloud/worker.py``: one thread, the backend's only caller) hands its outputs to
the instance's event loop, where each request's outputs wait in its own queue until the gateway asks.
"""

from __future__ import annotations

import asyncio
import logging
import os
from abc import ABC, abstractmethod
from typing import Any, Hashable

import msgspec

from pdlink.cloud.backend import Backend, load_backend
from pdlink.cloud.cluster.instance_spec import InstanceSpec
from pdlink.cloud.outputs import Output
from pdlink.cloud.scheduler import Scheduler
from pdlink.cloud.slowed_backend import SlowedBackend
from pdlink.cloud.worker import ModelWorker

log = logging.getLogger(__name__)


class Instance(ABC):
    """Base of :class:`PrefillInstance` and :class:`DecodeInstance`; ``backend`` may be given (tests)."""

    def __init__(self, spec: InstanceSpec, backend: Backend | None = None):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
        self.spec = spec
        self.backend = backend or load_backend(spec.model, threads=spec.threads, max_sequences=spec.slots,
                                               model_id=spec.model_id or None, context_window=spec.context_window)
        if spec.min_step_s:
            self.backend = SlowedBackend(self.backend, spec.min_step_s)
        self.scheduler = self._make_scheduler()
        self.worker = ModelWorker(self.scheduler, self._from_worker)
        self._queues: dict[Hashable, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False

    @abstractmethod
    def _make_scheduler(self) -> Scheduler:
        """The scheduler subclass of this role (``cloud/cluster/instance_scheduler.py``)."""

    async def boot(self) -> dict:
        """Bind to the running event loop, warm up and start the model worker; returns ``describe()``."""
        if not self._started:
            self._loop = asyncio.get_running_loop()
            ids = self.backend.tokenizer.encode("Warm up the model once before serving.")[:16]
            await asyncio.to_thread(self.worker.warm_up, ids, 2)
            self.worker.start()
            self._started = True
        return self.describe()

    def describe(self) -> dict:
        """The model as the gateway must announce it, and where this instance runs."""
        tok = self.backend.tokenizer
        return {"name": self.spec.name, "role": self.spec.role, "group": self.spec.group, "pid": os.getpid(),
                "model_id": self.backend.model_id, "vocab_size": self.backend.vocab_size,
                "eos_token_ids": list(self.backend.eos_token_ids), "tokenizer_hash": tok.hash,
                "tokenizer_info": dict(getattr(tok, "info", {}) or {}),
                "tokenizer_json": tok.to_json() if hasattr(tok, "to_json") else None,
                "context_window": self.backend.context_window, "info": dict(self.backend.info),
                "numerics": msgspec.to_builtins(self.backend.numerics) if self.backend.numerics else None}

    async def stats(self) -> dict:
        """Queue and load (the baseline router's periodic report, /healthz)."""
        s = self.worker.stats()
        return {"name": self.spec.name, "open": len(self._queues), "queued": s.queued, "decoding": s.decoding,
                "kv_sequences": s.kv_sequences, "busy_s": round(s.busy_s, 4), "pid": os.getpid()}

    async def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self.worker.close)
            self.backend.close()

    # ------------------------------------------------------------------ outputs

    def _open_queue(self, key: Hashable) -> asyncio.Queue:
        queue = self._queues[key] = asyncio.Queue()
        return queue

    def _from_worker(self, outputs: list[Output]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._route, outputs)

    def _route(self, outputs: list[Output]) -> None:
        for out in outputs:
            queue = self._queues.get(out.key)
            if queue is not None:
                queue.put_nowait(out)

    def _forget(self, key: Hashable) -> Any:
        return self._queues.pop(key, None)
