"""``pdlink bench session``: TTFT, shown-token gaps and cloud usage of pd vs device vs cloud mode.

One cloud server on loopback with its own thread budget -- by default the device's own 4-bit package,
so pd equals device token for token (``--cloud-backend package-f32`` serves the model compiled at
float32, ``torch`` the transformers backend) -- and one device session (its own thread budget)
emulating a phone-class device. For each prompt length (real text), the same prompt
runs in device, pd and cloud mode; ``session.json`` holds every figure, plus one timeline plot per
length (pd mode) and a TTFT-vs-length plot. Then a torch cloud (the backend that scores prompts)
serves the prompt-refinement measurements: speed and fidelity (``bench/session_refinement.py``).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pdlink.common.real_text import build_prompt
from pdlink.common.models import DEFAULT_MODEL

MODES = ("device", "pd", "cloud")
# package: the device's own package (the same model both sides: pd equals device token for token);
# package-f32: the model compiled at float32 (as fast to prefill here, 1.5-2x slower to decode);
# torch: transformers float32 (prefills fastest here, but decodes at ~65-85 ms/token: gaps).
CLOUD_BACKENDS = ("package", "package-f32", "torch")


@dataclass(frozen=True)
class SessionBenchConfig:
    """Settings of one ``pdlink bench session`` run."""

    output: str
    lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    max_tokens: int = 128
    device_profile: str = "phone"
    net_rtt_ms: float = 40.0
    net_jitter_ms: float = 5.0
    device_threads: int = 1
    cloud_threads: int = 2  # the emulated device needs a fraction of its core: it mostly waits out the profile
    package: str | None = None  # default: the q4_1 package of the default model, built on demand
    cloud_backend: str = "package"  # the cloud's model: see CLOUD_BACKENDS
    refinement: bool = True  # measure prompt refinement (on a torch cloud: it scores the prompt)

    def __post_init__(self):
        if self.cloud_backend not in CLOUD_BACKENDS:
            raise ValueError(f"--cloud-backend must be one of {CLOUD_BACKENDS}")
        if 2048 not in self.lengths:
            raise ValueError("--lengths must include 2048 (ttft_reduction_2k is taken there)")
        if min(self.lengths) < 16 or self.max_tokens < 2:
            raise ValueError("lengths must be >= 16 tokens and max_tokens >= 2")


def run_session_bench(cfg: SessionBenchConfig) -> dict:
    """Run the benchmark; writes ``session.json`` and the plots into ``cfg.output``; returns the report."""
    from pdlink.bench.engine import _ensure_package, machine_info
    from pdlink.edge.emulation import NetworkEmulation
    from pdlink.edge.session import Session, SessionConfig

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    packages = Path(".cache/bench-packages")
    package = Path(cfg.package) if cfg.package else _ensure_package("q4_1", packages)
    longest = max(cfg.lengths) + max(cfg.max_tokens, 384) + 64
    cloud_model = {"torch": DEFAULT_MODEL, "package": str(package)}.get(cfg.cloud_backend) \
        or str(_ensure_package("f32", packages))
    network = NetworkEmulation(rtt_ms=cfg.net_rtt_ms, jitter_ms=cfg.net_jitter_ms, seed=7)
    session = Session(SessionConfig(package=str(package), device_profile=cfg.device_profile, network=network,
                                    threads=cfg.device_threads, context_window=longest))
    try:
        with _cloud(cfg, cloud_model, longest, out / "session-server.log") as target:
            runs, cloud_server = _run_lengths(cfg, _with_cloud(session, target), out)
        refinement = None
        if cfg.refinement:
            from pdlink.bench.session_refinement import measure_refinement

            with _cloud(cfg, DEFAULT_MODEL, longest, out / "session-refine-server.log") as target:
                refining = _with_cloud(session, target)
                try:
                    refinement = measure_refinement(refining, out)
                finally:
                    refining.close()
    finally:
        session.close()
    report = _report(cfg, runs, machine_info(cfg.device_threads + cfg.cloud_threads), session)
    report["cloud_server"], report["refinement"] = cloud_server, refinement
    (out / "session.json").write_text(json.dumps(report, indent=1))
    plot_session_bench(report, out / "session.png")
    return report


@contextmanager
def _cloud(cfg: SessionBenchConfig, model: str, longest: int, log_path: Path):
    """A cloud server for ``model`` on loopback with the benchmark's thread budget; yields its target."""
    from pdlink.cloud.server_process import ServerProcess
    from pdlink.edge.cloud_link import CloudTarget

    server = ServerProcess("--model", model, "--threads", str(cfg.cloud_threads), "--max-prompt-tokens",
                           str(longest), "--max-leading-tokens", str(max(384, cfg.max_tokens)),
                           "--prefill-chunk-tokens", "1024", "--step-token-budget", "2048",
                           "--ttft-budget-s", "600", log_path=log_path)
    with server:
        yield CloudTarget(server.wait_ready(timeout_s=300), event_timeout_s=600)


def _with_cloud(session, target):
    """A session sharing ``session``'s engine, pointed at ``target``."""
    from pdlink.edge.session import Session

    return Session(replace(session.cfg, cloud=target), engine=session.engine, profile=session.profile)


def _run_lengths(cfg: SessionBenchConfig, session, out: Path) -> tuple[dict, str | None]:
    """Every prompt length in device, pd and cloud mode (after a warm-up); one timeline plot per length."""
    from pdlink.edge.timeline import plot_timeline

    runs: dict[str, dict] = {}
    try:
        list(session.generate(build_prompt(session.tokenizer, 64), mode="pd", max_tokens=4))  # warm-up
        for length in cfg.lengths:
            ids = build_prompt(session.tokenizer, length)
            runs[str(length)] = {}
            for mode in MODES:
                t0 = time.perf_counter()
                list(session.generate(ids, mode=mode, max_tokens=cfg.max_tokens, ignore_eos=True))
                result = session.last
                runs[str(length)][mode] = {**result.to_json(), "wall_s": time.perf_counter() - t0,
                                           "gaps_s": result.gaps_s}
                if mode == "pd":
                    plot_timeline(result.timeline, out / f"session-timeline-{length}.png",
                                  f"pd, {result.prompt_tokens} prompt tokens, {cfg.device_profile} (emulated), "
                                  f"RTT {cfg.net_rtt_ms:.0f} ms: TTFT {result.ttft_s:.2f} s, hand-over "
                                  f"{result.handover_index}, fallback {result.fallback}")
                print(f"  {length:5d} {mode:6s} ttft {result.ttft_s:7.2f} s  handover {result.handover_index}"
                      f"  cloud busy {result.cloud_busy_s}  max gap {result.max_gap_s * 1000:.0f} ms", flush=True)
        return runs, session.last.emulation["cloud_server"]
    finally:
        session.close()


def _report(cfg: SessionBenchConfig, runs: dict, machine: dict, session) -> dict:
    pd_gaps = np.concatenate([np.array(r["pd"]["gaps_s"]) for r in runs.values()] or [np.zeros(1)])
    by_origin = {"cloud": [], "device": []}  # gap before each shown pd token, by where that token came from
    for r in runs.values():
        for gap, origin in zip(r["pd"]["gaps_s"], r["pd"]["origins"][1:]):
            by_origin[origin].append(gap)
    busy = {m: sum(r[m]["cloud_busy_s"] or 0.0 for r in runs.values()) for m in ("pd", "cloud")}
    two_k = runs["2048"]
    return {
        "ttft_reduction_2k": 1 - two_k["pd"]["ttft_s"] / two_k["device"]["ttft_s"],
        "max_gap_s": float(pd_gaps.max()) if pd_gaps.size else 0.0,
        "p99_gap_s": float(np.percentile(pd_gaps, 99)) if pd_gaps.size else 0.0,
        "cloud_busy_ratio_pd_vs_cloud": busy["pd"] / busy["cloud"] if busy["cloud"] else None,
        "max_gap_before_cloud_tokens_s": max(by_origin["cloud"], default=0.0),
        "max_gap_before_device_tokens_s": max(by_origin["device"], default=0.0),
        "device_decode_s_per_token_of_profile": session.profile.decode_s_per_token,
        "ttft_s": {length: {m: r[m]["ttft_s"] for m in MODES} for length, r in runs.items()},
        "ttft_reduction": {length: 1 - r["pd"]["ttft_s"] / r["device"]["ttft_s"] for length, r in runs.items()},
        "cloud_busy_s": {length: {m: r[m]["cloud_busy_s"] for m in ("pd", "cloud")} for length, r in runs.items()},
        "handover_index": {length: r["pd"]["handover_index"] for length, r in runs.items()},
        "host_slower_steps": {length: {m: r[m]["emulation"]["device"].get("host_slower_steps") for m in MODES}
                              for length, r in runs.items()},
        "pd_equals_device": {length: r["pd"]["token_ids"] == r["device"]["token_ids"] for length, r in runs.items()},
        "predicted_vs_measured": {cfg.device_profile: {length: predicted_vs_measured(r["pd"])
                                                       for length, r in runs.items()}},
        "pd_equals_device_note": "expected with --cloud-backend package (the same model on both sides); a "
                                 "float32 cloud (package-f32, torch) differs from the 4-bit device in some tokens",
        "config": asdict(cfg),
        "threads": {"device_engine": cfg.device_threads, "cloud_server": cfg.cloud_threads,
                    "note": "device and cloud share this machine's cores, each with its own thread budget; the "
                            "emulated device sleeps most of its time (waits out the profile), and steps where "
                            "this host was slower than the profile are counted (emulation.device.host_slower_steps)"},
        "device_profile": session.profile.to_json(),
        "emulation_note": "device speed emulated: the real engine computes every step, then waits out the "
                          "difference to the profile's time; the network is emulated on loopback",
        "machine": machine,
        "runs": runs,
    }


def predicted_vs_measured(pd: dict) -> dict:
    """One pd request's settings prediction beside its real timeline: TTFT, the cloud's first token, the
    largest gap and the hand-over, and the gap bound's verdict with its cause."""
    predicted, measured = pd["settings"].get("predicted") or {}, pd.get("measured") or {}
    return {
        "ttft_s": {"predicted": predicted.get("ttft_s"), "measured": pd["ttft_s"]},
        "cloud_ttft_s": {"predicted": predicted.get("cloud_ttft_s"), "measured": measured.get("cloud_ttft_s")},
        "max_gap_s": {"predicted": predicted.get("max_gap_s"), "measured": pd["max_gap_s"]},
        "handover_j": {"predicted": predicted.get("handover_j"), "measured": pd["handover_index"]},
        "hold_s": measured.get("hold_s"), "gap_bound_s": pd.get("gap_bound_s"),
        "gap_bound_missed_by_s": pd.get("gap_bound_missed_by_s"), "gap_miss_cause": pd.get("gap_miss_cause"),
    }


def plot_session_bench(report: dict, path: Path) -> None:
    """TTFT per mode against prompt length, and cloud busy seconds of pd vs cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted(report["ttft_s"], key=int)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in MODES:
        a.plot([int(n) for n in lengths], [report["ttft_s"][n][mode] for n in lengths], "o-", label=mode)
    a.set_xlabel("prompt tokens")
    a.set_ylabel("TTFT (s)")
    a.set_title(f"TTFT, {report['config']['device_profile']} (emulated); 2k reduction "
                f"{report['ttft_reduction_2k']:.0%}", fontsize=9)
    a.legend()
    a.grid(alpha=0.3)
    x = np.arange(len(lengths))
    for i, mode in enumerate(("pd", "cloud")):
        b.bar(x + (i - 0.5) * 0.4, [report["cloud_busy_s"][n][mode] or 0 for n in lengths], 0.4, label=mode)
    b.set_xticks(x, lengths)
    b.set_xlabel("prompt tokens")
    b.set_ylabel("cloud busy seconds")
    b.set_title(f"cloud busy, pd / cloud = {report['cloud_busy_ratio_pd_vs_cloud'] or 0:.2f}", fontsize=9)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
