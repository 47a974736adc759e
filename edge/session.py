"""The P/D-Device session: a thin asyncio shell driving ``SessionCore`` with the engine and the cloud.

    session = Session(SessionConfig(package="packages/smollm2", cloud=CloudTarget("ws://127.0.0.1:8765"),
                                    device_profile="phone"))
    for tok in session.generate("Summarize ...", mode="pd", max_tokens=128):
        print(tok.text, end="", flush=True)      # tok.origin is "cloud" or "device", tok.time_s since submit
    print(session.last.to_json()["ttft_s"])

Engine steps run on one worker thread (the VM releases the GIL), so cloud tokens keep arriving and the
speed controller keeps releasing tokens while the device computes. Modes: ``pd`` (cloud first, device
takes over), ``device`` (local only), ``cloud`` (the cloud makes every token; the baseline).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Iterator

from pdlink.edge.cloud_link import CloudFailure, CloudLink, CloudTarget
from pdlink.edge.device_profile import DeviceProfile, named_profile
from pdlink.edge.emulation import EmulatedDevice, NetworkEmulation
from pdlink.common.sampling import Sampler, SamplingParams
from pdlink.edge.session_core import SessionCore, SessionState
from pdlink.edge.session_result import SessionResult, build_result
from pdlink.edge.session_settings import (
    REFINE_MODES, CloudEstimate, SessionSettings, cloud_tokens_needed, decide_settings, retuned_pace, with_margin,
)
from pdlink.edge.timeline import Timeline
from pdlink.common.tokenizer import StreamingDetokenizer, end_of_turn_ids

MODES = ("pd", "device", "cloud")


@dataclass(frozen=True)
class SessionConfig:
    """One device process: the package, the cloud, the emulation and the session limits."""

    package: str
    cloud: CloudTarget | None = None
    device_profile: str | DeviceProfile | None = None  # emulate "phone", "laptop" or a profile; None = this machine
    network: NetworkEmulation = field(default_factory=NetworkEmulation)
    threads: int = 0
    context_window: int = 0
    max_gap_s: float = 0.05
    chunk_size: int = 512
    cloud_estimate: CloudEstimate = field(default_factory=CloudEstimate)
    done_wait_s: float = 5.0  # how long to wait for the cloud's final report after the answer
    refine: str = "off"  # prompt refinement in pd mode: "off" (lossless), "auto" (when it pays), "on"
    refine_keep_ratio: float = 0.5  # share of the prompt a refined prompt keeps

    def __post_init__(self):
        if isinstance(self.device_profile, str):
            named_profile(self.device_profile)  # raises with the list of names
        if self.max_gap_s <= 0 or self.chunk_size < 1 or self.done_wait_s < 0:
            raise ValueError("max_gap_s must be > 0, chunk_size >= 1 and done_wait_s >= 0")
        if self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {self.refine!r}")
        if not 0.0 < self.refine_keep_ratio <= 1.0:
            raise ValueError(f"refine_keep_ratio must be in (0, 1], got {self.refine_keep_ratio}")


@dataclass(frozen=True)
class SessionToken:
    """One shown token: its text piece, where it came from, and when (seconds since submit)."""

    index: int
    token_id: int
    text: str
    origin: str
    time_s: float


class Session:
    """A loaded engine plus a cloud target; ``generate`` runs one request in any mode."""

    def __init__(self, cfg: SessionConfig, engine=None, profile: DeviceProfile | None = None):
        """``engine``: reuse a loaded Engine; ``profile``: the device profile for settings when no named
        profile is emulated (default: measured once and stored, see ``pdlink profile``)."""
        from pdlink.edge.engine import Engine, EngineConfig

        self.cfg = cfg
        self.engine = engine or Engine(EngineConfig(package=cfg.package, num_threads=cfg.threads,
                                                    context_window=cfg.context_window, max_num_sequences=1))
        emulated = named_profile(cfg.device_profile) if isinstance(cfg.device_profile, str) else cfg.device_profile
        self.device = EmulatedDevice(self.engine, emulated)
        self._profile = emulated or profile
        self.tokenizer = self.engine.tokenizer
        self.stop_ids = end_of_turn_ids(self.engine.model_config.eos_token_ids, self.engine.tokenizer)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdlink-engine")
        self.last: SessionResult | None = None

    @property
    def profile(self) -> DeviceProfile:
        """The device profile the settings use: the emulated one, else this machine's (stored or measured)."""
        if self._profile is None:
            self._profile = _stored_or_measured_profile(self.engine)
        return self._profile

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def encode(self, prompt: str, raw: bool = False) -> list[int]:
        return self.tokenizer.encode(prompt) if raw else self.tokenizer.encode_chat(prompt)

    def generate(self, prompt: str | list[int], **kwargs) -> Iterator[SessionToken]:
        """Stream the answer (blocking iterator; arguments as ``agenerate``); the record is in ``self.last``."""
        out: queue.Queue = queue.Queue()

        async def pump():
            async for tok in self.agenerate(prompt, **kwargs):
                out.put(tok)

        def run():
            try:
                asyncio.run(pump())
                out.put(None)
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
                out.put(exc)

        thread = threading.Thread(target=run, name="pdlink-session", daemon=True)
        thread.start()
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()

    async def agenerate(self, prompt: str | list[int], *, mode: str = "pd", max_tokens: int = 128,
                        sampling: SamplingParams | None = None, raw: bool = False, k: int | None = None,
                        pace_s: float | None = None, chunk_size: int | None = None,
                        refine: str | None = None, ignore_eos: bool = False) -> AsyncIterator[SessionToken]:
        """Stream the answer as an async iterator; the full record is in ``self.last`` afterwards.

        ``prompt``: text (wrapped in the chat template unless ``raw``) or token ids. ``k``, ``pace_s``,
        ``chunk_size`` and ``refine`` ("off"/"auto"/"on") override the settings for this request (pd mode).
        ``ignore_eos``: always make ``max_tokens`` tokens (benchmarks)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "device" and self.cfg.cloud is None:
            raise ValueError(f"mode {mode!r} needs a cloud URL")
        ids = list(prompt) if not isinstance(prompt, str) else self.encode(prompt, raw)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + max_tokens > self.engine.context_window:
            from pdlink.edge.engine import PromptTooLongError

            raise PromptTooLongError(f"{len(ids)} prompt tokens + {max_tokens} new tokens do not fit the context "
                                     f"window of {self.engine.context_window} tokens; shorten the prompt or "
                                     "lower --max-tokens")
        sampling = sampling or SamplingParams()
        if refine is not None and refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
        settings = self._settings(mode, len(ids), max_tokens, refine or self.cfg.refine)
        if mode == "pd" and (k is not None or pace_s is not None or chunk_size is not None):
            settings = replace(settings, use_cloud=settings.use_cloud if k is None else k > 0,
                               k=settings.k if k is None else k,
                               pace_s=settings.pace_s if pace_s is None else pace_s,
                               chunk_size=chunk_size or settings.chunk_size, reason="set by the caller")
        run = _Run(self, ids, mode, max_tokens, sampling, settings, set() if ignore_eos else self.stop_ids)
        async for tok in run.drive():
            yield tok
        self.last = run.result

    def _settings(self, mode: str, prompt_tokens: int, max_tokens: int, refine: str) -> SessionSettings:
        if mode == "device":
            return SessionSettings(False, 0, 0.0, self.cfg.chunk_size, reason="device mode")
        if mode == "cloud":
            return SessionSettings(True, max_tokens, 0.0, self.cfg.chunk_size, reason="cloud mode")
        return decide_settings(prompt_tokens, max_tokens, self.profile, self.cfg.cloud_estimate,
                               max_gap_s=self.cfg.max_gap_s, chunk_size=self.cfg.chunk_size, refine=refine,
                               keep_ratio=self.cfg.refine_keep_ratio)


class _Run:
    """One request in flight: the core, the engine sequence, the cloud link, the timeline."""

    def __init__(self, session: Session, ids: list[int], mode: str, max_tokens: int, sampling: SamplingParams,
                 settings: SessionSettings, stop_ids: set[int]):
        self.s, self.ids, self.mode, self.settings, self.stop_ids = session, ids, mode, settings, stop_ids
        self.core = SessionCore(ids, max_tokens=max_tokens, stop_token_ids=stop_ids,
                                chunk_size=settings.chunk_size, pace_s=settings.pace_s,
                                max_gap_s=session.cfg.max_gap_s if mode == "pd" else None,
                                use_cloud=settings.use_cloud, device_compute=mode != "cloud")
        if mode == "pd" and not settings.use_cloud:
            self.core.fallback = settings.reason
        self.sampler, self.sampling = Sampler(sampling), sampling
        self.detok = StreamingDetokenizer(session.tokenizer)
        self.timeline = Timeline(prompt_tokens=len(ids))
        self.link: CloudLink | None = None
        self.k = settings.k  # the cloud's token budget, tightened once its TTFT estimate is known
        self.result: SessionResult | None = None

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    async def drive(self) -> AsyncIterator[SessionToken]:
        self.t0 = time.perf_counter()
        self.s.device.reset_stats()
        loop = asyncio.get_running_loop()
        seq = self.s.engine.add_sequence() if self.mode != "cloud" else None
        compute = inbox_get = None
        try:
            if self.settings.use_cloud:
                self.link = CloudLink(self.s.cfg.cloud, self.s.cfg.network, self.s.tokenizer.hash)
                self.link.start(prompt_token_ids=self.ids, k=self.settings.k, sampling=self.sampling,
                                stop_token_ids=sorted(self.stop_ids),
                                refine_keep_ratio=self.settings.refine_keep_ratio)
            while not self.core.finished:
                self._send_messages()
                if compute is None and (step := self.core.next_compute()) is not None:
                    compute = loop.run_in_executor(self.s._executor, self._step, seq, step, self._now())
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
            await self._finish_cloud()
        finally:
            if inbox_get is not None:
                inbox_get.cancel()
            if compute is not None:
                self.s.device.interrupt()  # the answer is complete: no need to wait out the emulated time
                await asyncio.wait([compute])
            if seq is not None:
                self.s.engine.remove_sequence(seq)
            if self.link is not None:
                await self.link.close()
        self.result = build_result(self)

    def _step(self, seq: int, step, started_s: float):
        """On the engine thread: run one step, sample the next token from its logits."""
        dev = self.s.device
        logits = dev.decode(seq, step.token_ids[0]) if step.decode else dev.prefill(seq, list(step.token_ids))
        return started_s, len(step.token_ids), self.sampler.sample(logits)

    def _computed(self, result) -> None:
        started, n, token = result
        before = self.core.state
        self.core.on_computed(n, token, self._now())
        self.timeline.local_steps.append((started, self._now(), n, self.core.num_computed_tokens))
        if before is not self.core.state and self.core.state is SessionState.DECODING and self.core.handover_index:
            self.timeline.handover_s = self._now()

    def _on_cloud(self, event) -> None:
        from pdlink.common.protocol import Accepted, Done, RefinedPrompt, Token

        now = self._now()
        if isinstance(event, Token):
            self.timeline.cloud_tokens.append((now, event.index))
            first = self.core.cloud_tokens_received == 0
            self.core.on_cloud_token(event.index, event.token_id, now)
            if first and self.mode == "pd":
                self.core.controller.set_pace(retuned_pace(self.settings, now, self.k, self.s.cfg.max_gap_s))
        elif isinstance(event, RefinedPrompt):
            self.core.on_refined_prompt(list(event.kept_indices))
            if self.core.refinement.get("applied"):
                self.timeline.refined_s, self.timeline.prompt_tokens = now, len(self.core.prompt)
        elif isinstance(event, Accepted):
            self._check_estimate(event.estimated_ttft_s, now)
        elif isinstance(event, Done):
            self.core.on_cloud_ended(event.reason)
        elif isinstance(event, CloudFailure):
            self.core.on_cloud_failed(event.reason)
        if self.core.fallback and self.timeline.fallback_s is None:
            self.timeline.fallback_s = now

    def _check_estimate(self, estimated_ttft_s: float, now: float) -> None:
        """The cloud's own TTFT estimate arrived: give it up when its first token would come after the
        device's own, else tighten k to what the closed form needs with the real TTFT."""
        predicted = self.settings.predicted or {}
        if self.mode != "pd" or "device_ttft_s" not in predicted:
            return
        cloud_ttft = now + estimated_ttft_s + self.s.cfg.network.rtt_ms / 2000
        if cloud_ttft > predicted["device_ttft_s"]:
            self.core.give_up_cloud(f"cloud_slow: estimated first token at {cloud_ttft:.2f} s, "
                                    f"the device's at {predicted['device_ttft_s']:.2f} s")
            return
        refined = predicted.get("refined_prompt_tokens") if self.settings.refine_keep_ratio else None
        j, _ = cloud_tokens_needed(len(self.ids), self.s.profile, cloud_ttft, self.settings.pace_s,
                                   self.core.max_tokens, refined)
        k = with_margin(j)
        if k < self.k and self.settings.reason != "set by the caller":
            self.k = k
            self.core.limit_cloud(k)

    def _send_messages(self) -> None:
        for msg in self.core.messages_to_send():
            if self.link is not None:
                self.timeline.stop_sent_s = self._now()
                asyncio.ensure_future(self.link.stop(msg.after_index))

    def _release(self) -> list[SessionToken]:
        out = []
        for shown in self.core.release_due(self._now()):
            now = self._now()
            self.timeline.shown.append((now, shown.index, shown.origin))
            out.append(SessionToken(shown.index, shown.token_id, self.detok.add(shown.token_id), shown.origin, now))
        return out

    async def _finish_cloud(self) -> None:
        if self.link is not None:
            await asyncio.sleep(0)  # let a queued stop/cancel leave first
            await self.link.wait_done(self.s.cfg.done_wait_s)


def _stored_or_measured_profile(engine) -> DeviceProfile:
    """This machine's profile for the package: read from the store, or measured once and stored."""
    from pdlink.edge.device_profile import load_profile, measure_profile, profile_store_path, save_profile

    path = profile_store_path(engine.manifest.config_hash, engine.num_threads)
    profile = load_profile(path)
    if profile is None:
        profile = measure_profile(engine)
        save_profile(profile, path)
    return profile
