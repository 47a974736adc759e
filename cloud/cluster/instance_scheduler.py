"""The cloud scheduler with the two cluster hooks: export a finished prefill's KV before its sequence is
freed (prefill instance), and adopt an imported KV before a request is scheduled (decode instance).

Both run where the base scheduler calls the backend (``schedule``/``update``, on the model worker's thread),
so the backend keeps its single caller.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Hashable

from pdlink.cloud.backend import Backend
from pdlink.cloud.request import Request, RequestStatus
from pdlink.cloud.scheduler import Scheduler, SchedulerConfig

log = logging.getLogger(__name__)

Exporter = Callable[[Backend, int], Any]  # (backend, seq_id) -> KV as the transfer layer carries it
Importer = Callable[[Backend, Any], tuple[int, tuple[int, ...]]]  # (backend, kv) -> (seq_id, token ids it holds)


class PrefillScheduler(Scheduler):
    """Requests end after their first token; the KV of those asked for is exported before it is freed."""

    def __init__(self, backend: Backend, cfg: SchedulerConfig, exporter: Exporter | None):
        super().__init__(backend, cfg)
        self.exporter = exporter
        self.wanted: set[Hashable] = set()  # keys whose KV should be exported
        self.exports: dict[Hashable, tuple[Any, str]] = {}  # key -> (kv or None, error)

    def _release_finished(self) -> None:
        for req in self._release:
            if req.key in self.wanted and req.status in (RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_EOS):
                self.wanted.discard(req.key)
                self.exports[req.key] = self._export(req)
        super()._release_finished()

    def _export(self, req: Request) -> tuple[Any, str]:
        if self.exporter is None:
            return None, "this backend cannot export KV"
        try:
            return self.exporter(self.backend, req.seq_id), ""
        except Exception as exc:  # the decode side re-prefills instead
            log.warning("KV export of %r failed: %s", req.key, exc)
            return None, f"KV export failed: {exc}"


class DecodeScheduler(Scheduler):
    """Requests may come with an imported KV of their first tokens; a KV that cannot be imported is
    dropped and the request re-prefills from its tokens (the fallback)."""

    def __init__(self, backend: Backend, cfg: SchedulerConfig, importer: Importer | None):
        super().__init__(backend, cfg)
        self.importer = importer
        self.pending: dict[Hashable, Any] = {}  # key -> KV to import before its first step
        self.imported: set[Hashable] = set()
        self.failed: set[Hashable] = set()  # keys whose KV could not be imported (they re-prefill)

    def schedule(self):
        for key, kv in list(self.pending.items()):
            req = self.get(key)
            del self.pending[key]
            if req is None or req.seq_id is not None or self.importer is None:
                continue
            if self.backend.num_sequences >= self.backend.max_sequences:
                self.pending[key] = kv  # waits for a sequence like any request
                continue
            self._adopt(req, kv)
        return super().schedule()

    def _adopt(self, req: Request, kv: Any) -> None:
        try:
            seq_id, held_ids = self.importer(self.backend, kv)
        except Exception as exc:
            log.warning("KV import of %r failed (%s): re-prefilling", req.key, exc)
            self.failed.add(req.key)
            return
        held = len(held_ids)
        if not 0 < held < req.num_prompt_tokens or tuple(held_ids) != req.prompt_token_ids[:held]:
            self.backend.free_sequence(seq_id)
            log.warning("KV of %r holds %d tokens that do not start its %d: re-prefilling", req.key, held,
                        req.num_prompt_tokens)
            self.failed.add(req.key)
            return
        req.seq_id, req.num_computed_tokens = seq_id, held
        req._move(RequestStatus.PREFILLING)
        self.imported.add(req.key)
