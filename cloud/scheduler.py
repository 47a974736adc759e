"""Continuous batching for the cloud: chunked prefills round-robin under a token budget, one batched decode.

Each step runs (1) prefill chunks of the requests still reading their prompt, taken round-robin,
at most ``prefill_chunk_tokens`` per request and ``step_token_budget`` in all (while requests decode, no
more than ``decode_stall_s`` of prefill at the measured speed), so one long prompt cannot starve the others
nor stall the streams, and (2) ONE batched decode of every request that finished its prefill and
still owes leading tokens. A request's KV cache is released as soon as it ends (stop, cancel,
disconnect, EOS, k tokens). Admission (``can_accept``, ``admit``) is :mod:`pdlink.cloud.admission`'s:
it estimates a newcomer's TTFT from the measured speeds and the queued work.

Not thread-safe: the server's model worker serializes every call. ``schedule``/``execute``/``update``
split a step so that a caller may release its lock while the backend computes; ``step`` runs all three.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable

import numpy as np

from pdlink.cloud.admission import Admission, AdmissionControl
from pdlink.cloud.backend import Backend
from pdlink.cloud.outputs import FinishedOutput, Output, RefinedOutput, TokenOutput
from pdlink.cloud.refinement import select_kept_indices
from pdlink.cloud.request import Request, RequestStatus

_R = RequestStatus
_MIN_STALL_CHUNK = 16  # the smallest prefill chunk a decode-bounded step still takes (progress for the prompts)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Batching and admission settings (tokens and seconds)."""

    step_token_budget: int = 512  # prompt tokens prefilled per step, over all requests
    prefill_chunk_tokens: int = 256  # prompt tokens per request per step
    max_requests: int = 64  # live requests (queued + running); more are refused as overloaded
    ttft_budget_s: float = 10.0  # refuse a request whose estimated TTFT is above this
    initial_prefill_tok_s: float = 500.0  # prefill speed assumed until a step has been measured
    ema_alpha: float = 0.2  # weight of the newest measurement in the speed averages
    decode_stall_s: float = 0.0  # while requests decode, a step prefills at most this long (0 = no bound)

    def __post_init__(self):
        if self.step_token_budget < 1 or self.prefill_chunk_tokens < 1:
            raise ValueError("step_token_budget and prefill_chunk_tokens must be >= 1")
        if self.prefill_chunk_tokens > self.step_token_budget:
            raise ValueError("prefill_chunk_tokens must be <= step_token_budget (a chunk must fit in one step)")
        if self.max_requests < 1:
            raise ValueError("max_requests must be >= 1")
        if not 0.0 <= self.decode_stall_s <= 60.0:
            raise ValueError(f"decode_stall_s must be in 0..60 seconds (0 = no bound), got {self.decode_stall_s}")
        if not self.ttft_budget_s > 0 or not self.initial_prefill_tok_s > 0 or not 0 < self.ema_alpha <= 1:
            raise ValueError("ttft_budget_s and initial_prefill_tok_s must be > 0 and ema_alpha in (0, 1]")


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A consistent picture of the scheduler at one instant, for /healthz and /metrics."""

    requests_live: int
    queued: int  # waiting for or in prefill
    decoding: int
    kv_sequences: int  # backend sequences holding KV cache
    prefill_tok_s: float
    decode_step_s: float
    busy_s: float
    steps: int


@dataclass(slots=True)
class StepPlan:
    """What one step computes: prompt chunks ``(request, start, end)`` and the decoding requests."""

    prefill: list[tuple[Request, int, int]] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)


@dataclass(slots=True)
class StepResult:
    """Logits of a step, the kept prompt positions of requests whose prompt ended (by sequence id), and
    how long each half took (scoring counts as prefill)."""

    prefill_logits: dict[int, np.ndarray]
    decode_logits: np.ndarray | None
    prefill_s: float
    decode_s: float
    kept_indices: dict[int, list[int]] = field(default_factory=dict)


class Scheduler:
    """Owns the live requests and drives a :class:`Backend` step by step (see the module doc)."""

    def __init__(self, backend: Backend, cfg: SchedulerConfig = SchedulerConfig(),
                 clock: Callable[[], float] = time.perf_counter):
        self.backend, self.cfg, self.clock = backend, cfg, clock
        self._live: dict[Hashable, Request] = {}
        self._prefill_queue: deque[Request] = deque()  # WAITING/PREFILLING, round-robin order
        self._decoding: list[Request] = []
        self._release: list[Request] = []  # finished requests whose backend sequence is not freed yet
        self.admission = AdmissionControl(cfg)
        self.busy_s = 0.0
        self.steps = 0

    # ------------------------------------------------------------------ queries

    @property
    def num_live(self) -> int:
        return len(self._live)

    @property
    def has_work(self) -> bool:
        return bool(self._prefill_queue or self._decoding or self._release)

    def get(self, key: Hashable) -> Request | None:
        return self._live.get(key)

    def stats(self) -> SchedulerStats:
        """The gauges now; a caller on another thread takes them under the lock that serializes this scheduler."""
        a = self.admission
        return SchedulerStats(len(self._live), len(self._prefill_queue), len(self._decoding),
                              self.backend.num_sequences, a.prefill_tok_s, a.decode_step_s, self.busy_s, self.steps)

    def estimate_ttft(self, prompt_tokens: int) -> float:
        """Seconds until a new ``prompt_tokens`` request would get its first token, from the queued work."""
        return self.admission.estimate_ttft(prompt_tokens, self._prefill_queue, self._decoding)

    def can_accept(self, prompt_tokens: int) -> tuple[bool, float]:
        """Ask before ``add``: (accepted, estimated TTFT in seconds). False when ``max_requests`` are live
        or the estimate is over ``ttft_budget_s``; the caller rejects then, with the estimate as a hint."""
        verdict = self._admission(prompt_tokens)
        return verdict.accepted, verdict.estimated_ttft_s

    # ------------------------------------------------------------------ commands

    def add(self, request: Request) -> None:
        """Queue a request (after ``can_accept``). Raises ValueError for a duplicate key or a request that
        cannot fit the backend's context window."""
        if request.key in self._live:
            raise ValueError(f"request {request.key!r} is already live")
        if request.status is not _R.WAITING:
            raise ValueError("only new requests can be added")
        if request.num_prompt_tokens + request.max_tokens > self.backend.context_window:
            raise ValueError(f"{request.num_prompt_tokens} prompt + {request.max_tokens} leading tokens exceed the "
                             f"context window of {self.backend.context_window}")
        if not request.arrival_s:
            request.arrival_s = self.clock()
        self._live[request.key] = request
        self._prefill_queue.append(request)

    def admit(self, request: Request) -> Admission:
        """``can_accept`` and ``add`` in one: the verdict, with the queue position of an accepted request.
        Raises ValueError as ``add`` does (a refused request is not checked)."""
        verdict = self._admission(request.num_prompt_tokens)
        if verdict.accepted:
            self.add(request)
            verdict = replace(verdict, queue_position=len(self._prefill_queue) - 1)
        return verdict

    def stop(self, key: Hashable, after_index: int) -> Request | None:
        """The client has tokens 0..after_index (or will): produce none past it; finishes the request at
        once when it already produced them. Returns the request, or None when it is not live."""
        req = self._live.get(key)
        if req is not None:
            req.stop_after = after_index if req.stop_after is None else min(req.stop_after, after_index)
            if req.num_output_tokens > req.stop_after:
                self._finish(req, _R.FINISHED_STOPPED)
        return req

    def cancel(self, key: Hashable, disconnected: bool = False) -> Request | None:
        """End a request now (cancel, or its connection is gone); its sequence is freed at the next
        ``schedule``/``update``. Returns the request, or None when it was not live."""
        req = self._live.get(key)
        if req is not None:
            self._finish(req, _R.FINISHED_DISCONNECTED if disconnected else _R.FINISHED_CANCELLED)
        return req

    # ------------------------------------------------------------------ stepping

    def step(self) -> list[Output]:
        """``schedule`` + ``execute`` + ``update`` in one call (single-threaded use)."""
        plan = self.schedule()
        if plan is None:
            return []
        try:
            result = self.execute(plan)
        except Exception as exc:
            return self.fail(plan, exc)
        return self.update(plan, result)

    def schedule(self) -> StepPlan | None:
        """Free ended sequences and plan the next step; None when there is nothing to compute."""
        self._release_finished()
        plan, budget, served = StepPlan(), self._prefill_budget(), []
        for req in list(self._prefill_queue):
            if budget <= 0:
                break
            if req.seq_id is None:
                if self.backend.num_sequences >= self.backend.max_sequences:
                    continue  # waits for a free sequence; requests behind it that hold one go on
                req.seq_id = self.backend.add_sequence()
                req._move(_R.PREFILLING)
                if self._refines(req):
                    self.backend.track_attention(req.seq_id, req.refine.window)
            n = min(req.remaining_prefill, self.cfg.prefill_chunk_tokens, budget)
            plan.prefill.append((req, req.num_computed_tokens, req.num_computed_tokens + n))
            budget -= n
            served.append(req)
        for req in served:  # round-robin: served requests go to the back of the queue
            self._prefill_queue.remove(req)
            self._prefill_queue.append(req)
        plan.decode = list(self._decoding)
        return plan if plan.prefill or plan.decode else None

    def _prefill_budget(self) -> int:
        """Prompt tokens this step may prefill: the step budget, and while requests decode no more than the
        measured prefill speed does in ``decode_stall_s`` (at least ``_MIN_STALL_CHUNK``), so the tokens they
        stream are never held up by seconds of someone else's prompt (stall-free batching, as Sarathi-Serve)."""
        budget = self.cfg.step_token_budget
        if self._decoding and self.cfg.decode_stall_s > 0:
            bounded = int(self.admission.prefill_tok_s * self.cfg.decode_stall_s)
            budget = min(budget, max(_MIN_STALL_CHUNK, bounded))
        return budget

    def execute(self, plan: StepPlan) -> StepResult:
        """Run the plan on the backend. Touches no scheduler state, so it may run without the caller's lock."""
        t0 = self.clock()
        prefill = self.backend.prefill({r.seq_id: r.prompt_token_ids[a:b] for r, a, b in plan.prefill}) \
            if plan.prefill else {}
        kept = {r.seq_id: select_kept_indices(self.backend.prompt_importance(r.seq_id), r.refine)
                for r, _, b in plan.prefill if b == r.num_prompt_tokens and self._refines(r)}
        t1 = self.clock()
        decode = self.backend.decode([r.seq_id for r in plan.decode],
                                     [r.output_token_ids[-1] for r in plan.decode]) if plan.decode else None
        return StepResult(prefill, decode, t1 - t0, self.clock() - t1, kept)

    def update(self, plan: StepPlan, result: StepResult) -> list[Output]:
        """Account a computed step: advance counters, sample tokens, end finished requests, free them."""
        now, outputs = self.clock(), []
        self.steps += 1
        self.busy_s += result.prefill_s + result.decode_s
        prefill_tokens = sum(b - a for _, a, b in plan.prefill)
        self.admission.measure(prefill_tokens, result.prefill_s, result.decode_s if plan.decode else None)
        for req, a, b in plan.prefill:
            req.busy_s += result.prefill_s * (b - a) / prefill_tokens
            if req.status.finished:
                continue  # cancelled while the step ran
            req.num_computed_tokens = b
            if req.remaining_prefill == 0:
                self._prefill_queue.remove(req)
                if req.seq_id in result.kept_indices:
                    outputs.append(RefinedOutput(req.key, result.kept_indices[req.seq_id], req.refine.keep_ratio))
                self._emit(req, result.prefill_logits[req.seq_id], now, outputs, first=True)
        for i, req in enumerate(plan.decode):
            req.busy_s += result.decode_s / len(plan.decode)
            if req.status.finished:
                continue
            req.num_computed_tokens += 1
            self._emit(req, result.decode_logits[i], now, outputs, first=False)
        self._release_finished()
        return outputs

    def fail(self, plan: StepPlan, exc: BaseException) -> list[FinishedOutput]:
        """The backend raised while computing ``plan``: end every request in it with an error."""
        outputs = []
        for req in {id(r): r for r in [r for r, _, _ in plan.prefill] + plan.decode}.values():
            if not req.status.finished:
                self._finish(req, _R.FINISHED_ERROR)
                outputs.append(FinishedOutput(req.key, req.status, req.num_output_tokens, req.busy_s))
        self._release_finished()
        return outputs

    # ------------------------------------------------------------------ internals

    def _admission(self, prompt_tokens: int) -> Admission:
        return self.admission.decide(prompt_tokens, len(self._live), self._prefill_queue, self._decoding)

    def _refines(self, req: Request) -> bool:
        return req.refine is not None and self.backend.supports_refinement

    def _emit(self, req: Request, logits: np.ndarray, now: float, outputs: list, first: bool) -> None:
        token = req.sampler.sample(logits)
        index = req._append_output(token)
        if first:
            req.first_token_s = now
        outputs.append(TokenOutput(req.key, index, token, now))
        end = req.end_status()
        if end is not None:
            self._finish(req, end)
            outputs.append(FinishedOutput(req.key, req.status, req.num_output_tokens, req.busy_s))
        elif first:
            req._move(_R.DECODING)
            self._decoding.append(req)

    def _finish(self, req: Request, status: RequestStatus) -> None:
        if req.status.finished:
            return
        live = req.status
        req._move(status)
        req.finish_s = self.clock()
        del self._live[req.key]
        if live is _R.DECODING:
            self._decoding.remove(req)
        elif req in self._prefill_queue:
            self._prefill_queue.remove(req)
        if req.seq_id is not None:
            self._release.append(req)

    def _release_finished(self) -> None:
        for req in self._release:
            self.backend.free_sequence(req.seq_id)
        self._release.clear()
