"""The record of one session request: the answer, where each token came from, timings, cloud usage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdlink.common.protocol_messages import DoneReason
from pdlink.common.reasons import FinishReason

from pdlink.common.numerics import compare_numerics, package_numerics
from pdlink.edge.gap_report import gap_miss
from pdlink.edge.timeline import Timeline


@dataclass
class SessionResult:
    """Everything ``pdlink generate --json`` prints for a session request, plus the timeline."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    mode: str
    ttft_s: float | None
    handover_index: int | None
    origins: list[str]
    fallback: str | None
    gaps_s: list[float]
    cloud_busy_s: float | None
    cloud_done: dict | None
    settings: dict
    refinement: dict | None
    emulation: dict
    e2e_s: float
    device_compute_s: float
    timeline: Timeline
    kept_indices: list[int] | None = None  # prompt positions the device prefilled, when refined (not in JSON)
    cached_prompt_tokens: int = 0  # leading prompt tokens a conversation's KV cache held already
    tail_text: str = ""  # text shown after the last token (held back for a stop string; not in JSON)
    gap_bound_s: float | None = None  # the promised bound: max(--max-gap-ms, device TPOT)
    gap_bound_missed_by_s: float = 0.0
    gap_miss_cause: str | None = None
    cloud_numerics: str | None = None  # "equal" / "different" (None: no cloud handshake)
    cloud_numerics_detail: str | None = None
    measured: dict | None = None  # the real timeline's figures beside ``settings.predicted``

    @property
    def max_gap_s(self) -> float:
        return max(self.gaps_s, default=0.0)

    def to_json(self, with_timeline: bool = False) -> dict:
        """The engine contract's keys plus the session's (see the CLI contract)."""
        gaps = np.array(self.gaps_s) if self.gaps_s else np.zeros(1)
        tokens = len(self.token_ids)
        decode_s = self.timeline.shown[-1][0] - self.timeline.shown[0][0] if tokens > 1 else 0.0
        out = {
            "text": self.text, "token_ids": self.token_ids, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": tokens, "finish_reason": self.finish_reason, "mode": self.mode,
            "prefill_s": self.ttft_s, "decode_s": decode_s,
            "prefill_tok_s": self.prompt_tokens / self.ttft_s if self.ttft_s else None,
            "decode_tok_s": (tokens - 1) / decode_s if decode_s else None,
            "ttft_s": self.ttft_s, "handover_index": self.handover_index, "origins": self.origins,
            "fallback": self.fallback, "max_gap_s": self.max_gap_s, "p99_gap_s": float(np.percentile(gaps, 99)),
            "mean_gap_s": float(gaps.mean()), "cloud_busy_s": self.cloud_busy_s, "cloud_done": self.cloud_done,
            "cloud_tokens_shown": self.origins.count("cloud"), "settings": self.settings,
            "refinement": self.refinement,
            "emulation": self.emulation, "e2e_s": self.e2e_s, "device_compute_s": self.device_compute_s,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "gap_bound_s": self.gap_bound_s, "gap_bound_missed_by_s": self.gap_bound_missed_by_s,
            "gap_miss_cause": self.gap_miss_cause, "cloud_numerics": self.cloud_numerics,
            "cloud_numerics_detail": self.cloud_numerics_detail, "measured": self.measured,
        }
        if with_timeline:
            out["timeline"] = self.timeline.to_json()
        return out


def build_result(run) -> SessionResult:
    """The record of a finished ``SessionRun`` (pdlink.edge.session_run)."""
    core, timeline, s = run.core, run.timeline, run.s
    first = timeline.shown[0][0] if timeline.shown else None
    done = run.link.done if run.link is not None else None
    welcome = run.link.welcome if run.link is not None else None
    tail = run.text.finish(drop_held=done is not None and done.reason == DoneReason.EOS)
    cloud_done = None
    if done is not None:
        cloud_done = {"reason": done.reason, "tokens_sent": done.tokens_sent, "cloud_busy_s": done.cloud_busy_s,
                      "stop_after_index": done.stop_after_index}
    settings = {"use_cloud": run.settings.use_cloud, "k": run.settings.k, "k_after_estimate": core.cloud_limit,
                "pace_s": run.settings.pace_s, "final_pace_s": core.controller.tau_s,
                "chunk_size": run.settings.chunk_size, "refine_keep_ratio": run.settings.refine_keep_ratio,
                "reason": run.settings.reason, "predicted": run.settings.predicted, "max_gap_s": s.cfg.max_gap_s,
                "gap_bound_s": run.settings.gap_bound_s, "version": run.settings.version}
    handover = core.handover_index
    bound = max(s.cfg.max_gap_s, run.settings.gap_bound_s or 0.0) if run.req.mode == "pd" else None
    missed, cause = gap_miss(timeline, bound, handover, core.fallback) if bound is not None else (0.0, None)
    numerics = _numerics(run, welcome)
    return SessionResult(
        gap_bound_s=bound, gap_bound_missed_by_s=missed, gap_miss_cause=cause, cloud_numerics=numerics[0],
        cloud_numerics_detail=numerics[1], measured=_measured(run, first),
        text=run.text.text, token_ids=list(core.answer), prompt_tokens=core.prompt_tokens or timeline.prompt_tokens,
        finish_reason=core.finish_reason or FinishReason.ERROR, mode=run.req.mode, ttft_s=first,
        handover_index=core.handover_index, origins=list(core.origins), fallback=core.fallback,
        gaps_s=[float(g) for g in timeline.gaps()],
        cloud_busy_s=done.cloud_busy_s if done is not None else (0.0 if run.link is None else None),
        cloud_done=cloud_done, settings=settings, refinement=_refinement(run, welcome),
        emulation=_emulation(run, welcome), e2e_s=run._now(),
        device_compute_s=run.compute_s - (s.device.waited_s if s.device is not None else 0.0),
        timeline=timeline,
        kept_indices=core.kept_indices, cached_prompt_tokens=run.cached_tokens, tail_text=tail)


def _numerics(run, welcome) -> tuple[str | None, str | None]:
    """Whether the cloud computes the device's numbers (None when no cloud answered the handshake)."""
    if welcome is None or getattr(run.s.engine, "manifest", None) is None:
        return None, None
    return compare_numerics(package_numerics(run.s.engine.manifest), welcome.numerics)


def _measured(run, first_shown_s: float | None) -> dict:
    """What the real timeline gave, in the keys of ``settings.predicted`` where they match."""
    arrivals = [t for t, _ in run.timeline.cloud_tokens]
    pacer = run.core.pacer
    return {"ttft_s": first_shown_s, "cloud_ttft_s": arrivals[0] if arrivals else None,
            "cloud_interval_s": (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else None,
            "catch_up_s": run.timeline.handover_s, "handover_j": run.core.handover_index,
            "hold_s": (first_shown_s - arrivals[0]) if arrivals and first_shown_s is not None else None,
            "device_decode_s": pacer.measured_decode_s() if pacer is not None else None}


def _emulation(run, welcome) -> dict:
    """What was emulated (device, network) and the thread budgets, for the output."""
    s = run.s
    device = s.device.label() if s.device is not None else {"device_profile": None, "emulated": False}
    emulated = bool(device.get("emulated"))
    return {"device": device, "network": s.cfg.network.label(),
            "threads": {"device_engine": s.engine.num_threads if s.engine is not None else None},
            "cloud_server": welcome.server if welcome is not None else None,
            "note": "emulated device: real engine work, then a wait to the profile's time" if emulated
            else "this machine's own speed"}


def _refinement(run, welcome) -> dict | None:
    """What became of prompt refinement: None when not asked; else whether it applied, or why not."""
    if not run.settings.refine_keep_ratio:
        return None
    if run.core.refinement is not None:
        return {"keep_ratio": run.settings.refine_keep_ratio, **run.core.refinement}
    why = ("the cloud does not offer prompt refinement" if welcome is not None and "refine" not in welcome.features
           else "no refined prompt arrived")
    return {"keep_ratio": run.settings.refine_keep_ratio, "applied": False, "note": why}
