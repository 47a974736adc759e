"""``pdlink bench trace --simulate``: the trace run of ``bench/trace_replay.py`` in the discrete-event simulator
(``pdlink.sim``), at any scale, plus cloud capacity at equal TTFT SLO (pd vs cloud mode) and a check of the
simulator against a real replay of the same requests.

Costs come from profiles: the device's (``cfg.device_profile``), the cloud's (``cfg.cloud_profile``; default
``local-cpu``, measured on this machine) and the RTT. The requests are exactly the replay's: the trace's
first ``max_requests`` with at least ``min_prompt_tokens`` prompt tokens, prompts cut to
``max_prompt_tokens``, answers to ``max_output_tokens``, arrivals ``rate_scale`` times faster (with
``poisson``: first re-timed as a Poisson process at the trace's mean rate, seeded by ``seed``). pd requests
decide their settings with ``settings_version`` (2: SLO-aware, with ``ttft_slo_s``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from pdlink.traces.report import RequestRecord, TraceBenchConfig, summarize
from pdlink.edge.settings_v2 import NOT_NEEDED
from pdlink.edge.device_profile import resolve_profile
from pdlink.sim import Network, SimRequest, Simulation, named_cloud_profile
from pdlink.sim.cloud_profile import CloudProfile

DEFAULT_CLOUD_PROFILE = "local-cpu"
VALIDATION_KEYS = ("ttft_p50_s", "ttft_p99_s", "cloud_busy_s_per_request")


def trace_requests(cfg: TraceBenchConfig, rate_scale: float | None = None) -> list[SimRequest]:
    """The run's requests, capped and scaled as in the replay (see the module docstring)."""
    from pdlink.traces import load_trace

    workload = load_trace(cfg.trace, cfg.traces_dir)
    if cfg.min_prompt_tokens:
        workload = workload.filter_input(min_tokens=cfg.min_prompt_tokens)
    workload = workload.first(cfg.max_requests)
    if cfg.poisson:
        workload = workload.poisson(cfg.seed)
    workload = workload.scale_rate(cfg.rate_scale if rate_scale is None else rate_scale)
    return [SimRequest(r.arrival_s, max(1, min(r.input_tokens, cfg.max_prompt_tokens)),
                       max(1, min(r.output_tokens, cfg.max_output_tokens))) for r in workload]


def cloud_profile_of(cfg: TraceBenchConfig) -> CloudProfile:
    return named_cloud_profile(cfg.cloud_profile or DEFAULT_CLOUD_PROFILE)


def simulate(cfg: TraceBenchConfig, requests: list[SimRequest], *, mode: str | None = None, devices: int | None = None,
             device_profile=None, cloud=None, policy=None, ttft_slo_s: float | None = None, cloud_estimate=None,
             ) -> tuple[list[RequestRecord], Simulation]:
    """One simulation of ``requests`` with the run's settings (any of them overridden; ``ttft_slo_s``: the SLO
    the pd settings aim at, default the run's; ``cloud_estimate``: what the devices assume of the cloud,
    default the cloud profile's idle speeds)."""
    profile = cloud if cloud is not None else cloud_profile_of(cfg)
    sim = Simulation(requests, mode=mode or cfg.mode, device=device_profile or cfg.device_profile, cloud=profile,
                     devices=devices or cfg.devices, network=Network(cfg.net_rtt_ms / 1000),
                     max_gap_s=cfg.max_gap_ms / 1000, policy=policy,
                     ttft_slo_s=cfg.ttft_slo_s if ttft_slo_s is None else ttft_slo_s,
                     settings_version=cfg.settings_version, cloud_estimate=cloud_estimate)
    return sim.run(), sim


def run_trace_simulation(cfg: TraceBenchConfig, *, cloud=None, policy=None, cloud_estimate=None) -> dict:
    """Simulate the run, write ``trace-sim-<mode>.json`` and a plot under ``cfg.output``; returns the report.
    With ``cfg.ttft_slo_s`` the report also holds ``capacity``: pd vs cloud mode at that SLO for the run's
    device profile (``cloud_capacity``), with its plot."""
    t0 = time.perf_counter()
    requests = trace_requests(cfg)
    records, sim = simulate(cfg, requests, cloud=cloud, policy=policy, cloud_estimate=cloud_estimate)
    extra = {"simulator": _describe(sim, cloud if cloud is not None else cloud_profile_of(cfg),
                                    time.perf_counter() - t0)}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.ttft_slo_s is not None:
        extra["capacity"] = capacity_comparison(cfg, [cfg.device_profile], cfg.ttft_slo_s, cloud=cloud, policy=policy)
        plot_capacity(extra["capacity"], out / "trace-sim-capacity.png")
    report = summarize(cfg, records, extra)
    (out / cfg.report_name).write_text(json.dumps(report, indent=2))
    plot_run(report, out / cfg.report_name.replace(".json", ".png"))
    return report


def _describe(sim: Simulation, cloud, wall_s: float) -> dict:
    profile = cloud.to_json() if isinstance(cloud, CloudProfile) else f"custom CloudModel ({cloud!r})"
    return {"device_profile": sim.device.to_json(), "cloud_profile": profile,
            "net_rtt_s": sim.network.rtt_s, "devices": sim.devices, "cloud_estimate": asdict(sim.cloud_estimate),
            "cloud": sim.cloud.stats(), "wall_s": wall_s,
            "note": "simulated: costs from the profiles above, the real SessionCore decides every request"}


# ---------------------------------------------------------------------- capacity at equal TTFT SLO

def cloud_capacity(cfg: TraceBenchConfig, mode: str, slo_s: float, attainment: float = 0.9, *, device_profile=None,
                   cloud=None, policy=None, iterations: int = 8, max_scale: float = 2.0 ** 14) -> dict:
    """The highest arrival rate (requests/s) at which at least ``attainment`` of the requests see their first
    token within ``slo_s`` (a request the device answers alone within the SLO counts: its user is served; each
    probe also reports ``attainment_cloud_assisted``, the share among the requests the cloud helped):
    bisection (geometric) on the trace's rate scale, one device per request (devices never queue). ``bounded`` False: even ``max_scale`` times the
    trace rate meets the SLO (the cloud is not what limits it); ``capacity_rps`` 0: not even a near-idle cloud meets it. ``limit`` says what broke first."""
    base = trace_requests(cfg, rate_scale=1.0)
    span = base[-1].arrival_s - base[0].arrival_s if len(base) > 1 else 0.0
    if span <= 0:
        raise ValueError("capacity needs requests spread over time (at least two distinct arrivals)")
    base_rps = (len(base) - 1) / span
    probes: dict[float, dict] = {}

    def probe(scale: float) -> bool:
        reqs = [replace(r, arrival_s=r.arrival_s / scale) for r in base]
        records, sim = simulate(cfg, reqs, mode=mode, devices=len(reqs), device_profile=device_profile, cloud=cloud,
                                policy=policy, ttft_slo_s=slo_s)
        ttft = np.array([r.ttft_s + r.device_wait_s if r.ttft_s is not None else np.inf for r in records])
        alone = np.array([r.fallback is not None and r.fallback.startswith(NOT_NEEDED) for r in records])
        hold = [s.cloud_request.finish_s - s.cloud_request.arrival_s for s in sim.sessions
                if s.cloud_request is not None and s.cloud_request.finish_s is not None]
        busy = float(np.sum([r.cloud_busy_s for r in records]))
        probes[scale] = {"rate_rps": base_rps * scale, "attainment": float(np.mean(ttft <= slo_s)),
                         "attainment_cloud_assisted": float(np.mean(ttft[~alone] <= slo_s)) if (~alone).any() else 1.0,
                         "requests_within_slo_per_cloud_s": float(np.sum(ttft <= slo_s)) / busy if busy else None,
                         "ttft_p50_s": float(np.percentile(ttft[np.isfinite(ttft)], 50)) if np.isfinite(ttft).any()
                         else None, "fallback_rate": float(np.mean([r.fallback is not None for r in records])),
                         "cloud_busy_s_per_request": float(np.mean([r.cloud_busy_s for r in records])),
                         "cloud_hold_s_mean": float(np.mean(hold)) if hold else 0.0,
                         "device_alone_rate": float(np.mean(alone)), **sim.cloud.stats()}
        return probes[scale]["attainment"] >= attainment

    lo = hi = None
    scale = 1.0
    if probe(scale):
        lo = scale
        while hi is None and scale < max_scale:
            scale *= 4
            hi, lo = (scale, lo) if not probe(scale) else (None, scale)
    else:
        hi = scale
        while lo is None and scale > 2.0 ** -14:
            scale /= 4
            lo, hi = (scale, hi) if probe(scale) else (None, scale)
    if lo is not None and hi is not None:
        for _ in range(iterations):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if probe(mid) else (lo, mid)
    capacity = base_rps * lo if lo is not None else 0.0
    return {"mode": mode, "slo_s": slo_s, "attainment_target": attainment, "capacity_rps": capacity,
            "bounded": hi is not None, "limit": _limit(probes.get(hi)) if hi is not None else
            "not the cloud: the SLO holds at the highest rate tried", "trace_rate_rps": base_rps,
            "requests": len(base), "probes": [probes[s] for s in sorted(probes)]}


def _limit(p: dict | None) -> str:
    """What broke at the first failing rate: admission, the accelerator, or the device."""
    if p is None:
        return "no rate met the SLO"
    if p["cloud_accepted"] == 0 or p["attainment"] == 0 and p["fallback_rate"] > 0.99:
        return "the device: requests fall back and its own TTFT misses the SLO"
    rejected = p["cloud_rejected"] / max(1, p["cloud_rejected"] + p["cloud_accepted"])
    if rejected > 0.02:
        who = "live requests" if p["cloud_peak_live"] >= p["cloud_max_concurrent"] else "the TTFT budget"
        return (f"admission: {rejected:.0%} rejected ({who}; max {p['cloud_max_concurrent']} live, each held "
                f"{p['cloud_hold_s_mean']:.2f} s)")
    return (f"accelerator time: utilization {p['cloud_utilization']:.0%}, {p['cloud_busy_s_per_request'] * 1e3:.1f} "
            f"ms busy per request, queueing delays the first token")


def capacity_comparison(cfg: TraceBenchConfig, device_profiles: list, slo_s: float, attainment: float = 0.9,
                        **kwargs) -> dict:
    """``cloud_capacity`` of cloud mode (the device does not matter there) and of pd mode per device profile;
    ``ratio`` = pd / cloud (a lower bound when pd is not bounded)."""
    cloud_mode = cloud_capacity(cfg, "cloud", slo_s, attainment, **kwargs)
    cloud = kwargs.get("cloud") or cloud_profile_of(cfg)
    out = {"trace": cfg.trace, "min_prompt_tokens": cfg.min_prompt_tokens, "slo_s": slo_s,
           "attainment_target": attainment, "cloud_mode": cloud_mode, "profiles": {},
           "cloud_profile": cloud.name if isinstance(cloud, CloudProfile) else "custom"}
    for spec in device_profiles:
        device = resolve_profile(spec)
        pd = cloud_capacity(cfg, "pd", slo_s, attainment, device_profile=device, **kwargs)
        ratio = pd["capacity_rps"] / cloud_mode["capacity_rps"] if cloud_mode["capacity_rps"] else None
        out["profiles"][device.name] = {"capacity_pd_rps": pd["capacity_rps"],
                                        "capacity_cloud_rps": cloud_mode["capacity_rps"], "ratio": ratio,
                                        "ratio_is_lower_bound": not pd["bounded"], "limit_pd": pd["limit"],
                                        "limit_cloud": cloud_mode["limit"], "device": device.to_json(), "pd": pd}
    return out


# ---------------------------------------------------------------------- validation and plots

def validate_against_replay(sim_report: dict, replay_report: dict, tolerance: float = 0.15) -> dict:
    """Relative error of the simulator against a real replay of the same requests on ``VALIDATION_KEYS``;
    ``ok`` when every one is within ``tolerance``. Raises ValueError when a report lacks a key."""
    out, ok = {}, True
    for key in VALIDATION_KEYS:
        if sim_report.get(key) is None or replay_report.get(key) is None:
            raise ValueError(f"both reports need {key!r} (simulator: {sim_report.get(key)}, replay: "
                             f"{replay_report.get(key)})")
        sim, real = float(sim_report[key]), float(replay_report[key])
        err = abs(sim - real) / abs(real) if real else (0.0 if sim == real else math.inf)
        out[key] = {"simulated": sim, "replayed": real, "relative_error": err, "within": err <= tolerance}
        ok = ok and err <= tolerance
    return {"ok": ok, "tolerance": tolerance, "keys": out}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(report: dict, path: Path) -> None:
    """TTFT per request over arrival time, and cloud seconds per request."""
    plt = _pyplot()
    recs = report["records"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].scatter([r["arrival_s"] for r in recs], [r["ttft_s"] or np.nan for r in recs], s=6)
    axes[0].set(title=f"TTFT ({report['mode']}, simulated)", xlabel="arrival (s)", ylabel="TTFT (s)", yscale="log")
    axes[1].hist([r["cloud_busy_s"] for r in recs], bins=40)
    axes[1].set(title="cloud busy seconds per request", xlabel="seconds", ylabel="requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_capacity(comparison: dict | list[dict], path: Path) -> None:
    """SLO attainment vs arrival rate: cloud mode and pd per device profile, one panel per comparison."""
    plt = _pyplot()
    comps = comparison if isinstance(comparison, list) else [comparison]
    fig, axes = plt.subplots(1, len(comps), figsize=(7 * len(comps), 4.5), squeeze=False)
    for ax, comp in zip(axes[0], comps):
        cm = comp["cloud_mode"]["probes"]
        ax.plot([p["rate_rps"] for p in cm], [p["attainment"] for p in cm], "k-o", ms=3, label="cloud mode")
        for name, prof in comp["profiles"].items():
            pts = prof["pd"]["probes"]
            ratio = f"{prof['ratio']:.1f}x" if prof["ratio"] else "n/a"
            ax.plot([p["rate_rps"] for p in pts], [p["attainment"] for p in pts], "-o", ms=3,
                    label=f"pd, {name} ({ratio})")
        ax.axhline(comp["attainment_target"], color="grey", ls=":")
        ax.set(xscale="log", xlabel="arrival rate (requests/s)", ylabel=f"TTFT <= {comp['slo_s']} s share",
               title=f"{comp['trace']} (prompts >= {comp['min_prompt_tokens']}), cloud {comp['cloud_profile']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- the simulator against a replay

def replay_cloud_profile(profile: CloudProfile, devices: int) -> CloudProfile:
    """``profile``'s speeds under the serving limits the replay's cloud server runs with
    (``bench/replay_rig.py: replay_server_limits``: 1024-token chunks, 2048-token steps, a 600 s TTFT budget,
    a KV sequence per device and one more) instead of the server's defaults the named profile states."""
    from pdlink.bench.replay_rig import replay_server_limits

    return replace(profile, **replay_server_limits(devices))


def validate_replay(replay_dir: str | Path, cloud: CloudProfile | dict[str, CloudProfile] | None = None, modes=None,
                    tolerance: float = 0.15) -> dict:
    """Simulate every mode replayed in ``replay_dir`` (its ``trace-<mode>.json``) with the replay's own
    settings: the same requests, caps, devices, device profile, RTT and settings version; the cloud's speeds
    from ``cloud`` (one profile, or one per mode; default: the run's ``cloud_profile``, else ``local-cpu``)
    under the replay server's limits
    (``replay_cloud_profile``), and the devices' prior of the cloud as a replay's device has it
    (``replay_cloud_estimate``). Writes ``trace-sim-<mode>.json`` and ``validation.json`` (per mode: the
    simulated and replayed figures and their relative errors) into ``replay_dir``; returns the validation."""
    from pdlink.bench.replay_device import replay_cloud_estimate

    out = Path(replay_dir)
    reports = {m: json.loads((out / f"trace-{m}.json").read_text()) for m in (modes or ("device", "pd", "cloud"))
               if (out / f"trace-{m}.json").is_file()}
    if not reports:
        raise FileNotFoundError(f"no trace-<mode>.json replay report in {out}")
    result = {"replay_dir": str(out), "tolerance": tolerance, "modes": {}}
    for mode, replayed in reports.items():
        cfg = TraceBenchConfig(**{**replayed["config"], "simulate": True, "output": str(out)})
        speeds = cloud.get(mode) if isinstance(cloud, dict) else cloud
        speeds = speeds if speeds is not None else cloud_profile_of(cfg)
        profile = replay_cloud_profile(speeds, cfg.devices)
        simulated = run_trace_simulation(cfg, cloud=profile, cloud_estimate=replay_cloud_estimate(cfg))
        check = validate_against_replay(simulated, replayed, tolerance)
        check["extra"] = {k: {"simulated": simulated.get(k), "replayed": replayed.get(k)} for k in
                          ("ttft_from_arrival_p50_s", "ttft_from_arrival_p99_s", "e2e_p50_s", "handover_rate",
                           "fallback_rate", "max_gap_s")}
        check["cloud_profile"] = profile.to_json()
        result["modes"][mode] = check
    result["ok"] = all(m["ok"] for m in result["modes"].values())
    (out / "validation.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":  # python -m pdlink.bench.trace_sim REPLAY_DIR [CLOUD_PROFILE] [MODE=CLOUD_PROFILE ...]
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: python -m pdlink.bench.trace_sim REPLAY_DIR [CLOUD_PROFILE] [MODE=CLOUD_PROFILE ...] "
                 "(a profile: a name or a .json file)")
    per_mode = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
    default = [a for a in sys.argv[2:] if "=" not in a]
    profiles = {m: named_cloud_profile(per_mode.get(m, default[0] if default else DEFAULT_CLOUD_PROFILE))
                for m in ("device", "pd", "cloud")}
    v = validate_replay(sys.argv[1], profiles)
    print(json.dumps({m: {k: round(e["relative_error"], 3) for k, e in c["keys"].items()}
                      for m, c in v["modes"].items()}, indent=2))
    print(f"ok: {v['ok']}; wrote {Path(sys.argv[1]) / 'validation.json'}")
