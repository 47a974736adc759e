"""One serving accelerator with continuous batching, as ``pdlink.cloud.scheduler`` runs it, on simulated time.

Each step prefills prompt chunks round-robin (at most ``prefill_chunk_tokens`` per request and
``step_token_budget`` in all) and runs ONE batched decode of every request past its prompt that still owes
leading tokens. The step lasts ``profile.step_overhead_s + prefill costs + profile.decode_step_s(batch)``; a
request's busy seconds are its share of the step (prefill by tokens, decode split evenly), as in the real
scheduler. Admission asks before it adds: at most ``max_concurrent`` live requests and an estimated TTFT
within ``ttft_budget_s``, else the request is rejected at once (the device falls back).
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
        return (self.profile.prefill_time_s(tokens) + steps * (self.profile.decode_step_s(batch)
                                                              + self.profile.step_overhead_s))

    def can_accept(self, prompt_tokens: int) -> tuple[bool, float]:
        """(accepted, estimated TTFT): False when ``max_concurrent`` are live or the estimate is over budget."""
        estimate = self.estimate_ttft(prompt_tokens)
        if len(self._live) >= self.profile.max_concurrent:
            return False, estimate
        return estimate <= self.profile.ttft_budget_s, estimate

    def stats(self) -> dict:
        span = (self.last_busy_s - self.first_busy_s) if self.first_busy_s is not None else 0.0
        return {"cloud_busy_s": self.busy_s, "cloud_steps": self.steps, "cloud_accepted": self.accepted,
                "cloud_rejected": self.rejected, "cloud_peak_live": self.peak_live,
                "cloud_peak_decode_batch": self.peak_decode_batch,
                "cloud_utilization": self.busy_s / span if span > 0 else 0.0,
                "cloud_max_concurrent": self.profile.max_concurrent}

    # ------------------------------------------------------------------ commands

    def submit(self, request: CloudRequest, client: CloudClient) -> None:
        ok, estimate = self.can_accept(request.prompt_tokens)
        if not ok:
            self.rejected += 1
            request.status, request.done_reason = _S.REJECTED, "overloaded"
            client.on_rejected("overloaded")
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
            for req in self._prefill_queue:
                if budget <= 0:
                    break
                if req.status is _S.WAITING:
                    if holding >= profile.sequence_limit:
                        continue  # waits for a free sequence; requests behind it that hold one go on
                    holding += 1
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
            decode_s = profile.decode_step_s(len(decode))
            step_s = profile.step_overhead_s + sum(prefill_costs) + decode_s
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
        req.status, req.done_reason, req.finish_s = _S.FINISHED, reason, self.env.now
        _, client = self._live.pop(req.key)
        client.on_done(reason, req.busy_s)
