"""``pdlink bench trace``: the settings of a run, one record per request, and the report both the real
replay (``bench/trace_replay.py``) and the simulator (``bench/trace_sim.py``) write, with the same keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

MODES = ("pd", "device", "cloud")


@dataclass(frozen=True)
class TraceBenchConfig:
    """One ``pdlink bench trace`` run (replay on this machine, or ``simulate`` at any scale)."""

    output: str = "bench/results"
    trace: str = "azure_code"  # a named trace of $PDLINK_TRACES_DIR / ../shared/traces, or a .csv / .jsonl path
    traces_dir: str | None = None
    devices: int = 4  # emulated devices sending the trace's requests (each one request at a time)
    mode: str = "pd"
    device_profile: str = "phone"  # a named profile or a JSON file with the profile's fields
    cloud_profile: str | None = None  # simulate: a named cloud profile (default: measured from this machine)
    simulate: bool = False
    max_requests: int = 16  # cap for run time (stated in the JSON)
    max_output_tokens: int = 128  # cap for run time (stated in the JSON)
    min_prompt_tokens: int = 0  # keep only requests with at least this many prompt tokens ("long prompts")
    max_prompt_tokens: int = 3800  # longer prompts are cut to this (the model's context is 8k; the cloud's 4k)
    rate_scale: float = 1.0  # arrivals this many times faster than the trace's
    ttft_slo_s: float | None = None  # the TTFT SLO (settings and SLO attainment)
    settings_version: int = 2  # pd settings decision: 2 (least cloud seconds, SLO-aware) or 1 (closed form)
    poisson: bool = False  # re-time arrivals as a Poisson process at the trace's mean rate (seeded by --seed)
    max_gap_ms: float = 50.0
    net_rtt_ms: float = 40.0
    cloud_threads: int = 1
    device_threads: int = 1
    pin_cores: bool = False  # replay: the cloud server on its own cores, the devices on the next ones
    package: str | None = None  # the device's (and the replay cloud's) package; default: built on demand
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("devices", "max_requests", "max_output_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.min_prompt_tokens < 0 or self.max_prompt_tokens < 16:
            raise ValueError("--min-prompt-tokens must be >= 0 and --max-prompt-tokens >= 16")
        if self.rate_scale <= 0 or (self.ttft_slo_s is not None and self.ttft_slo_s <= 0) or self.max_gap_ms <= 0:
            raise ValueError("--rate-scale, --ttft-slo-s and --max-gap-ms must be > 0")
        if self.settings_version not in (1, 2):
            raise ValueError(f"--settings-version must be 1 or 2, got {self.settings_version}")
        if self.net_rtt_ms < 0 or self.cloud_threads < 0 or self.device_threads < 0:
            raise ValueError("--net-rtt-ms and the thread counts must be >= 0")

    @property
    def report_name(self) -> str:
        """``trace-<mode>.json`` for a replay, ``trace-sim-<mode>.json`` for a simulation."""
        return f"trace-sim-{self.mode}.json" if self.simulate else f"trace-{self.mode}.json"


@dataclass(frozen=True)
class RequestRecord:
    """What one request of the trace got: times in seconds from its submission by its device (replay and
    simulator alike); ``device_wait_s`` is how long it waited for that device to become free after its arrival
    (``ttft_s + device_wait_s``: TTFT from arrival)."""

    index: int
    arrival_s: float  # when the trace (scaled) submits it
    prompt_tokens: int
    output_tokens: int  # tokens shown
    ttft_s: float | None
    max_gap_s: float
    p99_gap_s: float
    e2e_s: float
    cloud_busy_s: float  # the cloud's busy seconds for this request (0: it never reached the cloud)
    handover_index: int | None
    fallback: str | None
    device_tokens: int = 0
    cloud_tokens: int = 0
    device_wait_s: float = 0.0
    token_ids: tuple[int, ...] = field(default=(), repr=False)  # for the lossless check across modes
    gap_miss_cause: str | None = None  # why the largest gap went past the bound (None: within it, or not known)

    @classmethod
    def from_result(cls, index: int, arrival_s: float, result, device_wait_s: float = 0.0) -> "RequestRecord":
        """The record of a session request (a ``pdlink.edge.session_result.SessionResult``)."""
        gaps = np.asarray(result.gaps_s) if result.gaps_s else np.zeros(1)
        return cls(index=index, arrival_s=arrival_s, prompt_tokens=result.prompt_tokens,
                   output_tokens=len(result.token_ids), ttft_s=result.ttft_s, max_gap_s=float(gaps.max()),
                   p99_gap_s=float(np.percentile(gaps, 99)), e2e_s=result.e2e_s,
                   cloud_busy_s=float(result.cloud_busy_s or 0.0), handover_index=result.handover_index,
                   fallback=result.fallback, device_tokens=result.origins.count("device"),
                   cloud_tokens=result.origins.count("cloud"), device_wait_s=device_wait_s,
                   token_ids=tuple(result.token_ids), gap_miss_cause=getattr(result, "gap_miss_cause", None))


def summarize(cfg: TraceBenchConfig, records: list[RequestRecord], extra: dict | None = None) -> dict:
    """The report: the contract's keys (``ttft_p50_s``, ``ttft_p99_s``, ``max_gap_s``, ``p99_gap_s``,
    ``cloud_busy_s_per_request``, ``handover_rate``, ``fallback_rate``, ``requests``; TTFT from the device's
    submission, ``ttft_from_arrival_p50_s``/``_p99_s`` add the wait for a busy device), the caps, the settings
    of the run, SLO attainment (TTFT from arrival) when an SLO is set, and every record."""
    if not records:
        raise ValueError("no request finished: nothing to report")
    ttft = np.array([r.ttft_s if r.ttft_s is not None else np.inf for r in records])
    finite = ttft[np.isfinite(ttft)]
    from_arrival = ttft + np.array([r.device_wait_s for r in records])
    finite_arrival = from_arrival[np.isfinite(from_arrival)]
    gaps = np.array([r.p99_gap_s for r in records])
    report = {
        "mode": cfg.mode, "simulated": cfg.simulate, "requests": len(records),
        "ttft_p50_s": float(np.percentile(finite, 50)) if finite.size else None,
        "ttft_p99_s": float(np.percentile(finite, 99)) if finite.size else None,
        "ttft_from_arrival_p50_s": float(np.percentile(finite_arrival, 50)) if finite_arrival.size else None,
        "ttft_from_arrival_p99_s": float(np.percentile(finite_arrival, 99)) if finite_arrival.size else None,
        "max_gap_s": float(max(r.max_gap_s for r in records)),
        "p99_gap_s": float(np.percentile(gaps, 99)),
        "e2e_p50_s": float(np.percentile([r.e2e_s for r in records], 50)),
        "cloud_busy_s_per_request": float(np.mean([r.cloud_busy_s for r in records])),
        "handover_rate": float(np.mean([r.handover_index is not None for r in records])),
        "fallback_rate": float(np.mean([r.fallback is not None for r in records])),
        "caps": {"max_requests": cfg.max_requests, "max_output_tokens": cfg.max_output_tokens,
                 "max_prompt_tokens": cfg.max_prompt_tokens,
                 "note": "caps keep the run time bounded; requests beyond them are not replayed, "
                         "answers longer than max_output_tokens are cut"},
        "config": asdict(cfg),
    }
    if cfg.ttft_slo_s is not None:
        report["ttft_slo_attainment"] = float(np.mean(from_arrival <= cfg.ttft_slo_s))
    report.update(extra or {})
    report["records"] = [{k: v for k, v in asdict(r).items() if k != "token_ids"} for r in records]
    return report
