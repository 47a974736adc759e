"""One serving accelerator with continuous batching, as ``pdlink.cloud.scheduler`` runs it, on simulated time.

Each step prefills prompt chunks round-robin (at most ``prefill_chunk_tokens`` per request and
``step_token_budget`` in all) and runs ONE batched decode of every request past its prompt that still owes
leading tokens. The step lasts ``profile.step_s(prefill costs, batch, decoding contexts)``; a request's busy
seconds are its share of the step (prefill by its chunk's cost, the rest split evenly over the decoding
sequences, the overhead over everyone served), as in the real scheduler. Admission asks before it adds: at
most ``max_concurrent`` live requests, an estimated TTFT within ``ttft_budget_s`` and a KV need (prompt +
leading tokens) that fits the profile's ``capacity_tokens`` at all, else the request is rejected at once (the
device falls back). An accepted request starts its prefill only when a sequence is free and its KV need fits
beside the ones already held (reserved from its first chunk to its end); until then it waits in order.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Hashable

import simpy

from pdlink.sim.cloud_model import CloudClient, CloudModel, CloudRequest, CloudStatus
from pdlink.sim.cloud_profile import CloudProfile

_S = CloudStatus


class BatchingCloud(CloudModel):
    """A single accelerator behind the :class:`CloudModel` interface (see the module docstring)."""

    def __init__(self, env: simpy.Environment, profile: CloudProfile):
        self.env, self.profile = env, profile
        self._live: dict[Hashable, tuple[CloudRequest, CloudClient]] = {}
        self._prefill_queue: deque[CloudRequest] = deque()
        self._decoding: list[CloudRequest] = []
        self._wake: simpy.Event | None = None
        self.busy_s = 0.0
        self.steps = 0
        self.accepted = 0
        self.rejected = 0
        self.peak_live = 0
        self.peak_decode_batch = 0
        self.kv_reserved = 0  # tokens reserved in the KV cache by the requests holding a sequence
        self.peak_kv_reserved = 0
        self.kv_waits = 0  # steps in which a request waited for KV room
        self.first_busy_s: float | None = None
        self.last_busy_s = 0.0
        env.process(self._serve())

    # ------------------------------------------------------------------ queries

    def estimate_ttft(self, prompt_tokens: int) -> float:
        """Seconds until a new request's first token, from the queued work (as ``Scheduler.estimate_ttft``)."""
        p, chunk = max(1, prompt_tokens), self.profile.prefill_chunk_tokens
        rounds = math.ceil(p / chunk)
        tokens = p + sum(min(r.remaining_prefill, rounds * chunk) for r in self._prefill_queue)
        steps = max(rounds, math.ceil(tokens / self.profile.step_token_budget))
        batch = len(self._decoding) + sum(r.max_tokens > 1 for r in self._prefill_queue)
        context = sum(r.prompt_tokens + r.num_output_tokens for r in self._decoding)
        prefill_s = self.profile.prefill_time_s(tokens)
        return self.profile.step_s(prefill_s / steps, batch, context) * steps

    @staticmethod
    def kv_need(request: CloudRequest) -> int:
        """KV tokens a request reserves: its prompt and the leading tokens it may make."""
        return request.prompt_tokens + request.max_tokens

    def can_accept(self, prompt_tokens: int) -> tuple[bool, float]:
        """(accepted, estimated TTFT): False when ``max_concurrent`` are live or the estimate is over budget."""
        estimate = self.estimate_ttft(prompt_tokens)
        if len(self._live) >= self.profile.max_concurrent:
            return False, estimate
        return estimate <= self.profile.ttft_budget_s, estimate

    def fits_at_all(self, request: CloudRequest) -> bool:
        """False: the request's KV need is more than the whole cache holds (it could never start)."""
        cap = self.profile.capacity_tokens
        return not cap or self.kv_need(request) <= cap

    def stats(self) -> dict:
        span = (self.last_busy_s - self.first_busy_s) if self.first_busy_s is not None else 0.0
        return {"cloud_busy_s": self.busy_s, "cloud_steps": self.steps, "cloud_accepted": self.accepted,
                "cloud_rejected": self.rejected, "cloud_peak_live": self.peak_live,
                "cloud_peak_decode_batch": self.peak_decode_batch,
                "cloud_utilization": self.busy_s / span if span > 0 else 0.0,
                "cloud_max_concurrent": self.profile.max_concurrent,
                "cloud_kv_capacity_tokens": self.profile.capacity_tokens,
                "cloud_peak_kv_reserved": self.peak_kv_reserved, "cloud_kv_wait_steps": self.kv_waits}

    # ------------------------------------------------------------------ commands

    def submit(self, request: CloudRequest, client: CloudClient) -> None:
        ok, estimate = self.can_accept(request.prompt_tokens)
        if not ok or not self.fits_at_all(request):
            self.rejected += 1
            reason = "overloaded" if not ok else "too long for the KV cache"
            request.status, request.done_reason = _S.REJECTED, reason
            client.on_rejected(reason)
            return
        self.accepted += 1
        request.arrival_s = self.env.now
        self._live[request.key] = (request, client)
        self.peak_live = max(self.peak_live, len(self._live))
        self._prefill_queue.append(request)
        client.on_accepted(estimate)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def stop(self, key: Hashable, after_index: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        req = entry[0]
        req.stop_after = after_index if req.stop_after is None else min(req.stop_after, after_index)
        if after_index < 0:
            self._finish(req, "cancelled")
        elif req.num_output_tokens > req.stop_after:
            self._finish(req, "stopped")

    # ------------------------------------------------------------------ the accelerator

    def _serve(self):
        profile = self.profile
        while True:
            if not self._prefill_queue and not self._decoding:
                self._wake = self.env.event()
                yield self._wake
                continue
            prefill, budget, served = [], profile.step_token_budget, []
            holding = len(self._live) - sum(r.status is _S.WAITING for r in self._prefill_queue)
            cap, blocked = profile.capacity_tokens, False
            for req in self._prefill_queue:
                if budget <= 0:
                    break
                if req.status is _S.WAITING:
                    if blocked or holding >= profile.sequence_limit:
                        continue  # waits for a free sequence; requests behind it that hold one go on
                    if cap and self.kv_reserved + self.kv_need(req) > cap:
                        blocked = True  # waits for KV room; later arrivals wait behind it (first come, first served)
                        self.kv_waits += 1
                        continue
                    holding += 1
                    self.kv_reserved += self.kv_need(req)
                    self.peak_kv_reserved = max(self.peak_kv_reserved, self.kv_reserved)
                    req.status = _S.PREFILLING
                n = min(req.remaining_prefill, profile.prefill_chunk_tokens, budget)
                prefill.append((req, req.num_computed_tokens, req.num_computed_tokens + n))
                budget -= n
                served.append(req)
            for req in served:  # round-robin: served requests go to the back of the queue
                self._prefill_queue.remove(req)
                self._prefill_queue.append(req)
            decode = list(self._decoding)
            prefill_costs = [profile.prefill_time_s(b - a, a) for _, a, b in prefill]
            if not prefill and not decode:  # everyone waits for KV room that only a finish can free
                self._wake = self.env.event()
                yield self._wake
                continue
            context = sum(r.prompt_tokens + r.num_output_tokens for r in decode)
            step_s = profile.step_s(sum(prefill_costs), len(decode), context)
            decode_s = max(0.0, step_s - profile.step_overhead_s - sum(prefill_costs))
            if not decode:
                prefill_costs = [c + decode_s * c / max(1e-12, sum(prefill_costs)) for c in prefill_costs]
            if self.first_busy_s is None:
                self.first_busy_s = self.env.now
            yield self.env.timeout(step_s)
            self.steps += 1
            self.busy_s += step_s
            self.last_busy_s = self.env.now
            self.peak_decode_batch = max(self.peak_decode_batch, len(decode))
            share = profile.step_overhead_s / (len(prefill) + len(decode))
            for (req, _, b), cost in zip(prefill, prefill_costs):
                req.busy_s += cost + share
                if req.status.finished:
                    continue  # cancelled while the step ran
                req.num_computed_tokens = b
                if req.remaining_prefill == 0:
                    self._prefill_queue.remove(req)
                    req.first_token_s = self.env.now
                    self._emit(req, first=True)
            for req in decode:
                req.busy_s += decode_s / len(decode) + share
                if not req.status.finished:
                    self._emit(req, first=False)

    def _emit(self, req: CloudRequest, first: bool) -> None:
        index = req.num_output_tokens
        req.num_output_tokens += 1
        self._live[req.key][1].on_token(index)
        if req.stop_after is not None and req.num_output_tokens > req.stop_after:
            self._finish(req, "stopped")
        elif req.num_output_tokens >= req.max_tokens:
            self._finish(req, "max_leading_tokens")
        elif first:
            req.status = _S.DECODING
            self._decoding.append(req)

    def _finish(self, req: CloudRequest, reason: str) -> None:
        if req.status.finished:
            return
        if req.status is _S.DECODING:
            self._decoding.remove(req)
        elif req in self._prefill_queue:
            self._prefill_queue.remove(req)
        if req.status is not _S.WAITING:
            self.kv_reserved -= self.kv_need(req)
        req.status, req.done_reason, req.finish_s = _S.FINISHED, reason, self.env.now
        _, client = self._live.pop(req.key)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()  # KV room freed: a waiting request may start
        client.on_done(reason, req.busy_s)
