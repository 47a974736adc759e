"""One request's way through the cluster, as the gateway drives it (the asyncio shell of the forwarding core).

``place()`` runs the router's offering: offer, take the answer, offer the next, wait, until a prefill
instance accepts or the budget is spent. ``run()`` (a task once accepted) waits for the first token and the
prompt's KV, hands both to the decode instance with the fewest open requests and relays its tokens. Faults:
a prefill instance that dies before its first token makes the request be offered again; a decode instance
that dies (also while its KV is arriving) makes another re-prefill the tokens sent so far and go on from
there; with no live instance left the request ends with ``error``. ``stop``/``cancel`` free it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pdlink.cloud.admission import Admission
from pdlink.cloud.cluster.forwarding import DECODE, PREFILL, GiveUp, Offer, Wait
from pdlink.cloud.cluster.handle import InstanceDied
from pdlink.cloud.cluster.jobs import DecodeJob, PrefillJob
from pdlink.cloud.outputs import FinishedOutput, TokenOutput
from pdlink.cloud.request import Request, RequestStatus

if TYPE_CHECKING:
    from pdlink.cloud.cluster.gateway import Gateway

log = logging.getLogger(__name__)
_STATUS = {s.done_reason: s for s in RequestStatus if s.finished}


class RequestFlow:
    """See the module doc. ``key`` is the connection's ``(connection id, request id)``."""

    def __init__(self, gateway: Gateway, request: Request, group: str):
        self.gw, self.request, self.group = gateway, request, group
        self.key = request.key
        self.wire_key = f"{request.key[0]}/{request.key[1]}/{id(self):x}"  # unique on the instances
        self.sent: list[int] = []
        self.busy_s = 0.0
        self.prefill: str | None = None
        self.decode: str | None = None
        self.stop_after: int | None = None
        self.ended = False
        self.task: asyncio.Task | None = None

    # ------------------------------------------------------------------ placement (on-demand forwarding)

    async def place(self, budget_s: float | None = None) -> Admission:
        """Find a prefill instance that accepts; the refusal names why when none did within the budget."""
        gw, started = self.gw, time.perf_counter()
        offering = gw.router.offering(self.group, started, budget_s)
        job = PrefillJob(self.wire_key, self.request.prompt_token_ids, self.request.sampler.params,
                         tuple(self.request.stop_token_ids), export_kv=gw.cluster.transfer_kv)
        while not self.ended:
            decision = offering.next(time.perf_counter())
            if isinstance(decision, GiveUp):
                gw.metrics_cluster.rejected.labels(self.group).inc()
                return Admission(False, time.perf_counter() - started, decision.message, gw.cluster.retry_s * 10)
            if isinstance(decision, Wait):
                await asyncio.sleep(decision.seconds)
                continue
            assert isinstance(decision, Offer)
            name, outcome = decision.instance, "busy"
            try:
                if await gw.handles[name].call("offer", job):
                    outcome = "accepted"
            except InstanceDied:
                outcome = "dead"
                offering.died(name)
                gw.instance_died(name)
            gw.metrics_cluster.offers.labels(self.group, name, outcome).inc()
            if outcome == "accepted":
                offering.accepted(name)
                self.prefill = name
                gw.track_open(name, count=False)
                return Admission(True, time.perf_counter() - started)
            if outcome == "busy":
                offering.rejected(name)
        return Admission(False, 0.0, "cancelled while being placed")

    # ------------------------------------------------------------------ the request's life after acceptance

    async def run(self) -> None:
        try:
            first = await self._first_token()
            if first is None:
                return
            if first.reason or self._owed() == 0:
                return self._finish(first.reason or "max_leading_tokens")
            await self._decode(first.kv)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request %s failed in the cluster", self.key)
            self._finish("error")

    async def _first_token(self):
        gw = self.gw
        while not self.ended:
            name = self.prefill
            try:
                result = await gw.handles[name].call("result", self.wire_key)
            except InstanceDied:
                gw.instance_died(name)
                gw.metrics_cluster.failovers.labels(self.group, PREFILL).inc()
                self._close_on(name)
                self.prefill = None
                verdict = await self.place(budget_s=gw.cfg.ttft_budget_s)  # offered again: no request is lost
                if not verdict.accepted:
                    self._finish("error")
                    return None
                continue
            self._close_on(name)
            self.prefill = None
            self.busy_s += result.busy_s
            gw.metrics_cluster.ttft.labels(self.group).observe(time.perf_counter() - self.request.arrival_s)
            self._emit(result.token_id, result.time_s)
            return result
        return None

    async def _decode(self, kv) -> None:
        gw, tried = self.gw, set()
        while not self.ended and self._owed() > 0:
            name = gw.pools.least_loaded(self.group, DECODE, exclude=tried)
            if name is None:
                if tried and gw.pools.candidates(self.group, DECODE):  # all full: try the round again
                    tried.clear()
                    await asyncio.sleep(gw.cluster.retry_s)
                    continue
                return self._finish("error")
            prompt = self.request.prompt_token_ids
            job = DecodeJob(self.wire_key, tuple(prompt) + tuple(self.sent), len(self.sent), self._owed(),
                            self.request.sampler.params, tuple(self.request.stop_token_ids),
                            kv if len(self.sent) == 1 else None)
            try:
                if not await gw.handles[name].call("start", job):
                    tried.add(name)
                    continue
                self.decode = name
                gw.track_open(name, count=True)
                await self._relay(name)
            except InstanceDied:
                gw.instance_died(name)
                gw.metrics_cluster.failovers.labels(self.group, DECODE).inc()
                tried.add(name)
            finally:
                if self.decode == name:
                    self._close_on(name)
                    self.decode = None

    async def _relay(self, name: str) -> None:
        gw, first = self.gw, True
        while not self.ended:
            batch = await gw.handles[name].call("poll", self.wire_key, 1.0)
            if first and (batch.tokens or batch.reason):
                gw.metrics_cluster.kv.labels(self.group, batch.kv_path).inc()
                first = False
            for index, token_id, time_s in batch.tokens:
                if index == len(self.sent):
                    self._emit(token_id, time_s)
            if batch.reason is not None:
                self.busy_s += batch.busy_s
                return self._finish(batch.reason)

    # ------------------------------------------------------------------ commands from the connection

    def stop(self, after_index: int) -> None:
        self.stop_after = after_index if self.stop_after is None else min(self.stop_after, after_index)
        if self.decode is not None and not self.ended:
            self.gw.spawn(self.gw.handles[self.decode].call("stop", self.wire_key, after_index))

    def cancel(self) -> float:
        """End the request on whichever instance holds it, at once; returns its busy seconds so far."""
        if not self.ended:
            self.ended = True
            for name in (self.prefill, self.decode):
                if name is not None:
                    self.gw.spawn(self.gw.handles[name].call("cancel", self.wire_key))
                    self._close_on(name)
            self.prefill = self.decode = None
            if self.task is not None and self.task is not asyncio.current_task():
                self.task.cancel()
        return self.busy_s

    # ------------------------------------------------------------------ internals

    def _owed(self) -> int:
        limit = self.request.max_tokens if self.stop_after is None else min(self.request.max_tokens,
                                                                            self.stop_after + 1)
        if self.sent and self.sent[-1] in self.request.stop_token_ids:
            return 0
        return max(0, limit - len(self.sent))

    def _emit(self, token_id: int, time_s: float) -> None:
        self.sent.append(int(token_id))
        self.gw.deliver([TokenOutput(self.key, len(self.sent) - 1, int(token_id), time_s)])

    def _finish(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.gw.metrics_cluster.finished.labels(self.group, reason).inc()
            self.gw.deliver([FinishedOutput(self.key, _STATUS[reason], len(self.sent), self.busy_s)])

    def _close_on(self, name: str) -> None:
        self.gw.track_close(name)
