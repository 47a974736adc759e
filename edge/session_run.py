"""One request in flight: the asyncio shell around ``SessionCore``.

The shell only does I/O: engine steps on the session's worker thread (the VM releases the GIL), the cloud
link's events, and the display timers, multiplexed with ``asyncio.wait``. Every decision is the core's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

from pdlink.common.protocol import Accepted, Done, RefinedPrompt, RefineOptions, Token
from pdlink.common.sampling import Sampler
from pdlink.edge.cloud_link import CloudFailure, CloudLink
from pdlink.edge.session_core import SessionCore, SessionState
from pdlink.edge.session_result import SessionResult, build_result
from pdlink.edge.session_settings import CloudEstimate, CloudPlan, SessionSettings
from pdlink.edge.text_stream import TextStream
from pdlink.edge.timeline import Timeline

if TYPE_CHECKING:
    from pdlink.edge.session import GenerationRequest, Session


@dataclass(frozen=True)
class SessionToken:
    """One shown token: its text piece, where it came from, and when (seconds since submit)."""

    index: int
    token_id: int
    text: str
    origin: str
    time_s: float


class SessionRun:
    """The core, the engine sequence, the cloud link and the timeline of one request."""

    def __init__(self, session: Session, req: GenerationRequest, prompt: str | list[int], ids: list[int] | None,
                 settings: SessionSettings, seq: int | None, cached_tokens: int, cloud_estimate: CloudEstimate):
        self.s, self.req, self.prompt, self.ids, self.settings = session, req, prompt, ids, settings
        self.seq, self.cached_tokens, self.cloud_estimate = seq, cached_tokens, cloud_estimate
        stop_ids = set() if req.ignore_eos else session.stop_ids
        gap_bound = max(session.cfg.max_gap_s, settings.gap_bound_s or 0.0)  # v2: the pace may be the device's TPOT
        self.core = SessionCore(
            ids or [], max_tokens=req.max_tokens, stop_token_ids=stop_ids, chunk_size=settings.chunk_size,
            pace_s=settings.pace_s, max_gap_s=gap_bound if req.mode == "pd" else None,
            use_cloud=settings.use_cloud, device_compute=req.mode != "cloud", cloud_limit=settings.k,
            plan=self._plan() if req.mode == "pd" and settings.use_cloud else None,
            fallback=settings.reason if req.mode == "pd" and not settings.use_cloud else None,
            num_cached_tokens=cached_tokens)
        self.sampler = Sampler(req.sampling)
        self.text = TextStream(session.tokenizer, req.stop)
        self.cloud_texts: dict[int, str] = {}  # without a tokenizer: the cloud's text of each token
        self.timeline = Timeline(prompt_tokens=len(ids or ()))
        self.link: CloudLink | None = None
        self.compute_s = 0.0  # engine time of this request (emulated waits included)
        self.result: SessionResult | None = None

    def _plan(self) -> CloudPlan:
        return CloudPlan(self.settings, self.s.profile, len(self.ids), self.req.max_tokens, self.s.cfg.max_gap_s,
                         downlink_s=self.s.cfg.network.rtt_ms / 2000, caller_set=self.settings.reason == "set by the caller",
                         cloud=self.cloud_estimate)

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    async def drive(self) -> AsyncIterator[SessionToken]:
        """Run the request to its end, yielding each token when it is shown; then ``result`` is set."""
        self.t0 = time.perf_counter()
        if self.s.device is not None:
            self.s.device.reset_stats()
        loop = asyncio.get_running_loop()
        compute = inbox_get = None
        try:
            self._start_cloud()
            while not self.core.finished:
                self._send_messages()
                if compute is None and (step := self.core.next_compute(self._now())) is not None:
                    compute = loop.run_in_executor(self.s.engine_thread, self._step, step, self._now())
                for tok in self._release():
                    yield tok
                if self.core.finished:
                    break
                waits = [f for f in (compute,) if f is not None]
                if self.link is not None:
                    inbox_get = inbox_get or asyncio.ensure_future(self.link.inbox.get())
                    waits.append(inbox_get)
                due = self.core.next_release_s()
                timeout = None if due is None else max(0.0, due - self._now())
                if not waits and timeout is None:
                    raise RuntimeError("session stalled: nothing to compute, receive or show")
                done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if compute is not None and compute in done:
                    self._computed(compute.result())
                    compute = None
                if inbox_get is not None and inbox_get in done:
                    self._on_cloud(inbox_get.result())
                    inbox_get = None
            self._send_messages()
            if self.link is not None:
                await asyncio.sleep(0)  # let a queued stop/cancel leave first
                await self.link.wait_done(self.s.cfg.done_wait_s)
        finally:
            if inbox_get is not None:
                inbox_get.cancel()
            if compute is not None:
                self.s.device.interrupt()  # the answer is complete: no need to wait out an emulated time
                await asyncio.wait([compute])
            if self.link is not None:
                await self.link.close()
        self.result = build_result(self)

    def _start_cloud(self) -> None:
        if not self.settings.use_cloud:
            return
        cfg = self.s.cfg
        tokenizer_hash = self.s.tokenizer.hash if self.s.tokenizer is not None else ""
        self.link = self.s.link_factory(cfg.cloud, tokenizer_hash)
        if self.ids is not None:
            prompt = dict(prompt_token_ids=self.ids, stop_token_ids=sorted(self.core.stop_token_ids))
        elif self.req.raw:
            prompt = dict(prompt_text=self.prompt)
        else:
            prompt = dict(prompt_messages=[{"role": "user", "content": self.prompt}])
        ratio = self.settings.refine_keep_ratio
        self.link.start(max_leading_tokens=self.settings.k, sampling=self.req.sampling,
                        refine=RefineOptions(keep_ratio=ratio) if ratio else None, **prompt)

    def _step(self, step, started_s: float):
        """On the engine thread: run one step, sample the next token from its logits."""
        t0 = time.perf_counter()
        dev = self.s.device
        if step.decode and self.sampler.params.greedy:
            token = dev.decode_greedy(self.seq, step.token_ids[0])  # only the id leaves the package
        else:
            logits = dev.decode(self.seq, step.token_ids[0]) if step.decode else dev.prefill(self.seq, list(step.token_ids))
            token = self.sampler.sample(logits)
        self.compute_s += time.perf_counter() - t0
        return started_s, len(step.token_ids), token

    def _computed(self, result) -> None:
        started, n, token = result
        before = self.core.state
        self.core.on_computed(n, token, self._now())
        self.timeline.local_steps.append((started, self._now(), n, self.core.num_computed_tokens))
        if before is not self.core.state and self.core.state is SessionState.DECODING and self.core.handover_index:
            self.timeline.handover_s = self._now()

    def _on_cloud(self, event) -> None:
        now = self._now()
        if isinstance(event, Token):
            self.timeline.cloud_tokens.append((now, event.index))
            self.cloud_texts[event.index] = event.text
            self.core.on_cloud_token(event.index, event.token_id, now)
        elif isinstance(event, RefinedPrompt):
            self.core.on_refined_prompt(list(event.kept_indices))
            if self.core.refinement.get("applied"):
                self.timeline.refined_s, self.timeline.prompt_tokens = now, len(self.core.prompt)
        elif isinstance(event, Accepted):
            if self.ids is None:
                self.timeline.prompt_tokens = event.prompt_tokens
            self.core.on_cloud_accepted(event.estimated_ttft_s, now)
        elif isinstance(event, Done):
            self.core.on_cloud_ended(event.reason)
        elif isinstance(event, CloudFailure):
            self.core.on_cloud_failed(event.reason)
        if self.core.fallback and self.timeline.fallback_s is None:
            self.timeline.fallback_s = now

    def _send_messages(self) -> None:
        for msg in self.core.messages_to_send():
            if self.link is not None:
                self.timeline.stop_sent_s = self._now()
                asyncio.ensure_future(self.link.stop(msg.after_index))

    def _release(self) -> list[SessionToken]:
        out = []
        for shown in self.core.release_due(self._now()):
            now = self._now()
            piece = self.text.add(shown.token_id, self.cloud_texts.get(shown.index, ""))
            self.timeline.shown.append((now, shown.index, shown.origin))
            out.append(SessionToken(shown.index, shown.token_id, piece, shown.origin, now))
            if self.text.stopped:
                self.core.stop_at(shown.index)
                break
        return out
