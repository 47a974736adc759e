"""The P/D-Device session: one loaded engine and one cloud target; every request runs through here.

    session = Session(SessionConfig(package="packages/smollm2", cloud=CloudTarget("ws://127.0.0.1:8765"),
                                    device_profile="phone"))
    for tok in session.generate("Summarize ...", mode="pd", max_tokens=128):
        print(tok.text, end="", flush=True)      # tok.origin is "cloud" or "device", tok.time_s since submit
    print(session.last.to_json()["ttft_s"])

One generation loop serves every mode (``pdlink.edge.session_run``): ``pd`` (cloud first, device takes
over), ``device`` (local only) and ``cloud`` (the cloud makes every token; the baseline; with no
package the cloud also tokenizes). A conversation keeps its KV cache between turns (``reuse_kv``).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Iterator

from pdlink.common.sampling import SamplingParams
from pdlink.common.tokenizer import end_of_turn_ids
from pdlink.edge.cloud_link import CloudTarget
from pdlink.edge.corrections import Correction, CorrectionStore
from pdlink.edge.device_profile import DeviceProfile, resolve_profile
from pdlink.edge.device_engine import DeviceEngine, LocalDevice, StepDevice
from pdlink.edge.emulation import EmulatedDevice, NetworkEmulation, cloud_link_factory
from pdlink.edge.session_result import SessionResult
from pdlink.edge.session_run import SessionRun, SessionToken
from pdlink.edge.session_settings import REFINE_MODES, CloudEstimate, SessionSettings, decide_settings
from pdlink.edge.settings_model import CHUNK_CHOICES
from pdlink.edge.settings_v2 import decide_settings_v2

MODES = ("pd", "device", "cloud")

__all__ = ["MODES", "GenerationRequest", "Session", "SessionConfig", "SessionResult", "SessionToken"]


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (a thread is a task on Linux; no-op elsewhere or at 0)."""
    if nice and hasattr(os, "setpriority"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)


@dataclass(frozen=True)
class SessionConfig:
    """One device process: the package, the cloud, the emulation and the session limits."""

    package: str | None = None  # None: cloud mode only (the cloud tokenizes the prompt)
    cloud: CloudTarget | None = None
    device_profile: str | DeviceProfile | None = None  # emulate a named profile, a profile JSON file or a profile; None = this machine
    network: NetworkEmulation = field(default_factory=NetworkEmulation)
    threads: int = 0
    context_window: int = 0
    max_gap_s: float = 0.05
    chunk_size: int = 512
    cloud_estimate: CloudEstimate = field(default_factory=CloudEstimate)
    done_wait_s: float = 5.0  # how long to wait for the cloud's final report after the answer
    refine: str = "off"  # prompt refinement in pd mode: "off" (lossless), "auto" (when it pays), "on"
    refine_keep_ratio: float = 0.5  # share of the prompt a refined prompt keeps
    ttft_slo_s: float | None = None  # pd settings v2: the TTFT SLO (None: as soon as the cloud can)
    settings_version: int = 2  # pd settings decision: 2 (least cloud seconds, settings_v2) or 1 (closed form)
    engine_nice: int = 0  # the engine thread's nice increment (Linux): > 0 lets the pacing loop preempt it
    learn_corrections: bool = True  # pd: learn how far the cloud estimate was off, per device and cloud (stored)
    corrections_file: str | None = None  # where they are stored (None: beside the measured device profiles)

    def __post_init__(self):
        if isinstance(self.device_profile, str):
            resolve_profile(self.device_profile)  # raises with the list of names, or the file's bad field
        if self.settings_version not in (1, 2) or (self.ttft_slo_s is not None and self.ttft_slo_s <= 0):
            raise ValueError(f"settings_version must be 1 or 2 and ttft_slo_s > 0, got {self.settings_version} "
                             f"and {self.ttft_slo_s}")
        if self.max_gap_s <= 0 or self.chunk_size < 1 or self.done_wait_s < 0:
            raise ValueError("max_gap_s must be > 0, chunk_size >= 1 and done_wait_s >= 0")
        if not 0 <= self.engine_nice <= 19:
            raise ValueError(f"engine_nice must be in 0..19 (0 = the process's priority), got {self.engine_nice}")
        if self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {self.refine!r}")
        if not 0.0 < self.refine_keep_ratio <= 1.0:
            raise ValueError(f"refine_keep_ratio must be in (0, 1], got {self.refine_keep_ratio}")


@dataclass(frozen=True)
class GenerationRequest:
    """One request's settings, checked here once. ``k``, ``pace_s``, ``chunk_size`` and ``refine`` override
    the decided settings (pd mode); ``ignore_eos`` always makes ``max_tokens`` tokens (benchmarks);
    ``stop`` strings end the answer where they appear; ``reuse_kv`` keeps the KV cache for the next turn
    and starts from what the previous turn left in it."""

    mode: str = "pd"
    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    raw: bool = False
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    reuse_kv: bool = False
    k: int | None = None
    pace_s: float | None = None
    chunk_size: int | None = None
    refine: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.refine is not None and self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {self.refine!r}")
        if (self.k is not None and self.k < 0) or (self.pace_s is not None and self.pace_s < 0) or \
                (self.chunk_size is not None and self.chunk_size < 1):
            raise ValueError("k and pace_s must be >= 0 and chunk_size >= 1")


class Session:
    """A loaded engine plus a cloud target; ``generate`` runs one request in any mode."""

    def __init__(self, cfg: SessionConfig, engine: DeviceEngine | None = None, profile: DeviceProfile | None = None,
                 link_factory=None):
        """``engine``: reuse a loaded engine (anything with the ``DeviceEngine`` members); ``profile``: the
        device profile for settings when no named profile is emulated (default: measured once and stored, see
        ``pdlink profile``); ``link_factory(target, tokenizer_hash) -> CloudLink``: how cloud links are opened
        (default: over ``cfg.network``'s emulation when set, else plain)."""
        self.cfg = cfg
        if engine is None and cfg.package is not None:
            from pdlink.edge.engine import Engine, EngineConfig

            engine = Engine(EngineConfig(package=cfg.package, num_threads=cfg.threads,
                                         context_window=cfg.context_window, max_num_sequences=1))
        self.engine = engine
        emulated = resolve_profile(cfg.device_profile) if cfg.device_profile is not None else None
        self.device: StepDevice | None = None if engine is None else \
            EmulatedDevice(engine, emulated) if emulated is not None else LocalDevice(engine)
        self.link_factory = link_factory or cloud_link_factory(cfg.network)
        self._profile = emulated or profile
        self.tokenizer = engine.tokenizer if engine is not None else None
        self.stop_ids = end_of_turn_ids(engine.model_config.eos_token_ids, engine.tokenizer) if engine else set()
        self.engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdlink-engine",  # every engine step
                                                initializer=_lower_priority, initargs=(cfg.engine_nice,))
        self._kept: tuple[int, list[int]] | None = None  # a conversation's sequence and the ids in its KV cache
        self.last: SessionResult | None = None
        self.corrections = CorrectionStore(cfg.corrections_file)

    @property
    def correction(self) -> Correction:
        """The learnt correction of the cloud estimate for this device and cloud (neutral when off or none)."""
        if not self.cfg.learn_corrections or self.cfg.cloud is None or self.engine is None:
            return Correction()
        return self.corrections.get(self.profile.name, self.cfg.cloud.url)

    @property
    def cloud_estimate(self) -> CloudEstimate:
        """The cloud estimate the settings use: the configured one, corrected by what was learnt."""
        return self.correction.apply(self.cfg.cloud_estimate)

    def _learn(self, result: SessionResult) -> None:
        """Fold a pd request's measured cloud TTFT and token interval into the stored correction."""
        predicted, measured = result.settings.get("predicted") or {}, result.measured or {}
        if not self.cfg.learn_corrections or result.mode != "pd" or not measured.get("cloud_ttft_s") \
                or not predicted.get("cloud_ttft_s"):
            return
        interval, correction = measured.get("cloud_interval_s"), self.correction
        tpot = correction.apply(self.cfg.cloud_estimate).tpot_s  # the estimate the request was planned with
        learnt = correction.learn(measured["cloud_ttft_s"] / predicted["cloud_ttft_s"],
                                  interval / tpot if interval and tpot else None)
        self.corrections.put(self.profile.name, self.cfg.cloud.url, learnt)

    @property
    def profile(self) -> DeviceProfile:
        """The device profile the settings use: the emulated one, else this machine's (stored or measured)."""
        if self._profile is None:
            from pdlink.edge.device_profile import stored_or_measured_profile

            self._profile = stored_or_measured_profile(self.engine)
        return self._profile

    def close(self) -> None:
        """Free the kept KV cache and stop the engine thread."""
        self.release_kv()
        self.engine_thread.shutdown(wait=True)

    def release_kv(self) -> None:
        """Forget a conversation's KV cache (the next request starts from an empty cache)."""
        if self._kept is not None:
            self.engine.remove_sequence(self._kept[0])
            self._kept = None

    def adopt_kv(self, seq: int, token_ids: list[int]) -> None:
        """Hand the session a sequence whose KV cache holds ``token_ids`` (a kept conversation); the next
        ``reuse_kv`` request starts from their common prefix with its prompt."""
        self.release_kv()
        self._kept = (seq, list(token_ids))

    def take_kv(self) -> tuple[int, list[int]] | None:
        """Take back the kept sequence and the ids in its KV cache (None when none); the session forgets it."""
        kept, self._kept = self._kept, None
        return kept

    def encode(self, prompt: str, raw: bool = False) -> list[int]:
        """The prompt's token ids: wrapped in the chat template as one user message unless ``raw``."""
        return self.tokenizer.encode(prompt) if raw else self.tokenizer.encode_chat(prompt)

    def generate(self, prompt: str | list[int], **request) -> Iterator[SessionToken]:
        """Stream the answer (blocking iterator; arguments as ``agenerate``); the record is in ``self.last``."""
        out: queue.Queue = queue.Queue()

        async def pump():
            async for tok in self.agenerate(prompt, **request):
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

    def complete(self, prompt: str | list[int], **request) -> SessionResult:
        """Run a request to the end and return its record."""
        for _ in self.generate(prompt, **request):
            pass
        return self.last

    async def agenerate(self, prompt: str | list[int], **request) -> AsyncIterator[SessionToken]:
        """Stream the answer as an async iterator; the full record is in ``self.last`` afterwards.

        ``prompt``: text (wrapped in the chat template unless ``raw``) or token ids; ``request``: the fields
        of ``GenerationRequest``. Raises ValueError (``PromptTooLongError`` among them) for a request
        that cannot run, before anything is computed or sent."""
        req = GenerationRequest(**request)
        if req.mode != "device" and self.cfg.cloud is None:
            raise ValueError(f"mode {req.mode!r} needs a cloud URL")
        if req.mode != "cloud" and self.engine is None:
            raise ValueError(f"mode {req.mode!r} needs a package (the device's model)")
        ids = self._prompt_ids(prompt, req.raw)
        cloud = self.cloud_estimate if req.mode == "pd" else self.cfg.cloud_estimate  # read the store once
        settings = self._settings(req, len(ids) if ids is not None else 0, cloud)
        seq, cached = await self._asequence_for(ids, req) if req.mode != "cloud" else (None, 0)
        run = None
        try:
            run = SessionRun(self, req, prompt, ids, settings, seq, cached, cloud)
            async for tok in run.drive():
                yield tok
        finally:
            if seq is not None:
                self._keep_or_free(seq, run, req.reuse_kv and run is not None)
        self.last = run.result
        self._learn(run.result)

    def _prompt_ids(self, prompt: str | list[int], raw: bool) -> list[int] | None:
        """Token ids of the prompt, checked against the context window (None: the cloud tokenizes)."""
        if self.tokenizer is None:
            if not isinstance(prompt, str) or not prompt:
                raise ValueError("without a package the prompt must be non-empty text (the cloud tokenizes it)")
            return None
        ids = list(prompt) if not isinstance(prompt, str) else self.encode(prompt, raw)
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def _check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        if prompt_tokens + max_tokens > self.engine.context_window:
            from pdlink.edge.engine import PromptTooLongError

            raise PromptTooLongError(f"{prompt_tokens} prompt tokens + {max_tokens} new tokens do not fit the "
                                     f"context window of {self.engine.context_window} tokens; shorten the prompt "
                                     "or lower --max-tokens")

    def _settings(self, req: GenerationRequest, prompt_tokens: int,
                  cloud: CloudEstimate | None = None) -> SessionSettings:
        """The request's settings against ``cloud`` (default: the corrected cloud estimate)."""
        cloud = cloud or self.cloud_estimate
        if self.engine is not None:
            self._check_fits(prompt_tokens, req.max_tokens)
        chunk = req.chunk_size or self.cfg.chunk_size
        if req.mode == "device":
            return SessionSettings(False, 0, 0.0, chunk, reason="device mode")
        if req.mode == "cloud":
            return SessionSettings(True, req.max_tokens, 0.0, chunk, reason="cloud mode")
        refine = req.refine or self.cfg.refine
        if self.cfg.settings_version == 2:
            chunks = (chunk,) if req.chunk_size else tuple(c for c in CHUNK_CHOICES if c <= chunk) or (chunk,)
            settings = decide_settings_v2(prompt_tokens, req.max_tokens, self.profile, cloud,
                                          max_gap_s=self.cfg.max_gap_s, ttft_slo_s=self.cfg.ttft_slo_s, refine=refine,
                                          keep_ratio=self.cfg.refine_keep_ratio, chunks=chunks)
        else:
            settings = decide_settings(prompt_tokens, req.max_tokens, self.profile, cloud,
                                       max_gap_s=self.cfg.max_gap_s, chunk_size=chunk, refine=refine,
                                       keep_ratio=self.cfg.refine_keep_ratio)
        if req.k is None and req.pace_s is None and req.chunk_size is None:
            return settings
        return replace(settings, use_cloud=settings.use_cloud if req.k is None else req.k > 0,
                       k=settings.k if req.k is None else req.k,
                       pace_s=settings.pace_s if req.pace_s is None else req.pace_s, reason="set by the caller")

    async def _asequence_for(self, ids: list[int], req: GenerationRequest) -> tuple[int, int]:
        """``_sequence_for`` on the engine thread (an engine shared with other requests may be mid-step, and
        the event loop must not wait for it); a request cancelled meanwhile frees the sequence it got."""
        fut = asyncio.get_running_loop().run_in_executor(self.engine_thread, self._sequence_for, ids, req)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception() is not None
                                  or self.engine.remove_sequence(f.result()[0]))
            raise

    def _sequence_for(self, ids: list[int], req: GenerationRequest) -> tuple[int, int]:
        """The engine sequence for a request and how many leading prompt tokens it holds already."""
        if self._kept is not None:
            seq, kept_ids = self._kept
            self._kept = None
            if req.reuse_kv:
                common = min(common_prefix_length(kept_ids, ids), len(ids) - 1)
                self.engine.rollback(seq, len(kept_ids) - common)
                return seq, common
            self.engine.remove_sequence(seq)
        return self.engine.add_sequence(), 0

    def _keep_or_free(self, seq: int, run: SessionRun, keep: bool) -> None:
        if not keep:
            self.engine.remove_sequence(seq)
            return
        known = run.core.prompt + run.core.answer
        extra = self.engine.num_computed_tokens(seq) - len(known)
        if extra > 0:  # computed past a stop string: not part of the conversation
            self.engine.rollback(seq, extra)
        self._kept = (seq, known[: self.engine.num_computed_tokens(seq)])


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
