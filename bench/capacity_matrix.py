"""Cloud capacity at equal TTFT SLO, pd vs cloud mode, for every device profile x cloud profile x trace
(x arrivals as traced / re-timed as Poisson), in the simulator: ``trace-sim-capacity.json`` and plots.

``python -m pdlink.bench.capacity_matrix --output DIR`` runs the whole matrix (``CASES``). The SLO of a
(trace, cloud) pair is the one cloud mode meets at low load: ``SLO_HEADROOM`` times the p90 TTFT of cloud
mode with every request alone on an idle cloud, rounded up to 0.5 s (stated per pair in the JSON; the same
for traced and Poisson arrivals). Each pd figure says what limits it (``limiting_factor``). A cloud that
cannot serve the trace's prompts at all in cloud mode (its admission rejects them) is reported, not run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pdlink.traces.report import TraceBenchConfig
from pdlink.bench.capacity_slo import plot_slo_sweeps, slo_sweep
from pdlink.bench.trace_sim import capacity_comparison, simulate, trace_requests
from pdlink.edge.device_profile import DEVICE_PROFILES
from pdlink.sim.cloud_profile import named_cloud_profile

SLO_HEADROOM = 1.25
TRACES = {  # trace -> the run's caps (stated in the JSON): no answer is cut; prompts as noted
    "azure_code": dict(min_prompt_tokens=1024, max_prompt_tokens=8192, max_output_tokens=4096),
    "mooncake": dict(min_prompt_tokens=1024, max_prompt_tokens=32768, max_output_tokens=4096),
}
CLOUDS = ("h100-vllm", "l4-vllm", "local-cpu")


def low_load_slo(cfg: TraceBenchConfig) -> dict:
    """The SLO cloud mode meets at low load (module docstring) and the p90 it came from."""
    reqs = [replace(r, arrival_s=i * 1000.0) for i, r in enumerate(trace_requests(cfg, rate_scale=1.0))]
    records, _ = simulate(cfg, reqs, mode="cloud", devices=len(reqs))
    ttft = [math.inf if r.ttft_s is None else r.ttft_s + r.device_wait_s for r in records]
    p90 = float(np.percentile(ttft, 90))
    return {"slo_s": math.ceil(SLO_HEADROOM * p90 * 2) / 2 if math.isfinite(p90) else None,
            "cloud_low_load_ttft_p90_s": p90, "cloud_idle_unserved": float(np.mean(np.isinf(ttft)))}


def limiting_factor(entry: dict, cloud_mode: dict) -> str:
    """What limits pd's capacity, from the probes (the first failing rate, or the last rate tried)."""
    pd = entry["pd"]
    probes = pd["probes"]
    alone = max(p["device_alone_rate"] for p in probes)
    if not pd["bounded"]:
        return (f"the SLO met on-device: {alone:.0%} of requests answer alone, the cloud is never the bottleneck "
                f"up to {probes[-1]['rate_rps']:.3g} req/s (ratio is a lower bound)")
    if pd["capacity_rps"] == 0:
        return "the device: it misses the SLO and the cloud cannot help"
    fail = min((p for p in probes if not _meets(p, pd["attainment_target"])), key=lambda p: p["rate_rps"])
    ok = max((p for p in probes if _meets(p, pd["attainment_target"])), key=lambda p: p["rate_rps"])
    busy_pd, busy_cloud = ok["cloud_busy_s_per_request"], _busy_at(cloud_mode, ok["rate_rps"])
    parts = [f"{alone:.0%} of requests answer on-device"] if alone > 0.005 else []
    if fail.get("cloud_kv_wait_steps", 0) > 0:
        parts.append(f"KV memory ({fail['cloud_peak_kv_reserved']:,} of {fail['cloud_kv_capacity_tokens']:,} "
                     "tokens reserved, requests wait for room)")
    if fail["cloud_rejected"]:
        parts.append(f"admission rejects {fail['cloud_rejected']}")
    parts.append(f"cloud prefill of the rest: {busy_pd * 1e3:.0f} ms cloud time per request in pd vs "
                 f"{busy_cloud * 1e3:.0f} ms in cloud mode" if busy_cloud else
                 f"cloud prefill of the rest: {busy_pd * 1e3:.0f} ms cloud time per request")
    return "; ".join(parts)


def _meets(probe: dict, target: float) -> bool:
    """The capacity rule of ``cloud_capacity``: the share of all requests within the SLO meets the target."""
    return probe["attainment"] >= target


def _busy_at(cloud_mode: dict, rate: float) -> float | None:
    probes = [p for p in cloud_mode["probes"] if p["rate_rps"] <= rate * 1.001]
    return (probes or cloud_mode["probes"])[-1]["cloud_busy_s_per_request"] if cloud_mode["probes"] else None


def cloud_limit(cloud_mode: dict) -> str:
    """What limits cloud mode's capacity: decode share of its cloud time, KV waits, or prefill."""
    if cloud_mode["capacity_rps"] == 0:
        return "the SLO: cloud mode misses it even at low load"
    fail = [p for p in cloud_mode["probes"] if not _meets(p, cloud_mode["attainment_target"])]
    if not fail:
        return cloud_mode["limit"]
    p = min(fail, key=lambda q: q["rate_rps"])
    kv = (f"; KV memory: {p['cloud_peak_kv_reserved']:,} of {p['cloud_kv_capacity_tokens']:,} tokens reserved, "
          f"requests waited for room in {p['cloud_kv_wait_steps']} steps") if p.get("cloud_kv_wait_steps") else ""
    return cloud_mode["limit"] + kv


def run_case(trace: str, cloud: str, poisson: bool, profiles: list[str], max_requests: int, iterations: int,
             traces_dir: str | None = None, slos: tuple[float, ...] = ()) -> dict:
    cfg = TraceBenchConfig(trace=trace, traces_dir=traces_dir, simulate=True, cloud_profile=cloud,
                           max_requests=max_requests, poisson=poisson, **TRACES[trace])
    slo = low_load_slo(cfg)
    if slo["slo_s"] is None:
        return {"trace": trace, "cloud_profile": cloud, "skipped": f"cloud mode leaves {slo['cloud_idle_unserved']:.0%} "
                f"of the requests unserved even on an idle cloud (its admission rejects prompts whose estimated TTFT "
                f"is over its budget): no SLO it meets", **slo, "profiles": {},
                "arrivals": "poisson" if poisson else "as traced"}
    t0 = time.perf_counter()
    comp = capacity_comparison(cfg, profiles, slo["slo_s"], iterations=iterations)
    reqs = trace_requests(cfg)
    raw = [r for r in __import__("pdlink.traces", fromlist=["load_trace"]).load_trace(trace, traces_dir)
           .filter_input(min_tokens=cfg.min_prompt_tokens).first(max_requests)]
    comp.update(slo)
    comp["arrivals"] = "poisson (seed 0) at the trace's mean rate" if poisson else "as traced"
    comp["caps"] = {"max_requests": max_requests, **TRACES[trace],
                    "prompts_cut": sum(r.input_tokens > cfg.max_prompt_tokens for r in raw),
                    "answers_cut": sum(r.output_tokens > cfg.max_output_tokens for r in raw),
                    "mean_prompt_tokens": float(np.mean([r.prompt_tokens for r in reqs])),
                    "mean_output_tokens": float(np.mean([r.output_tokens for r in reqs]))}
    comp["cloud_mode"]["limiting_factor"] = cloud_limit(comp["cloud_mode"])
    for entry in comp["profiles"].values():
        entry["limiting_factor"] = limiting_factor(entry, comp["cloud_mode"])
    if slos:
        comp["slo_sweep"] = slo_sweep(cfg, profiles, list(slos), iterations=iterations)
    comp["wall_s"] = time.perf_counter() - t0
    comp["cloud_profile_json"] = named_cloud_profile(cloud).to_json()
    return comp


def table(cases: list[dict]) -> list[dict]:
    rows = []
    for c in cases:
        if c.get("skipped"):
            rows.append({"trace": c["trace"], "arrivals": c["arrivals"], "cloud": c["cloud_profile"],
                         "skipped": c["skipped"]})
        for name, e in c["profiles"].items():
            rows.append({"trace": c["trace"], "arrivals": c["arrivals"], "cloud": c["cloud_profile"],
                         "slo_s": c["slo_s"], "device": name, "capacity_pd_rps": e["capacity_pd_rps"],
                         "capacity_cloud_rps": e["capacity_cloud_rps"], "ratio": e["ratio"],
                         "ratio_is_lower_bound": e["ratio_is_lower_bound"], "limiting_factor": e["limiting_factor"],
                         "cloud_mode_limit": c["cloud_mode"]["limiting_factor"]})
    return rows


def plot(cases: list[dict], out: Path) -> None:
    from pdlink.bench.trace_sim import _pyplot, plot_capacity

    plt = _pyplot()
    cases = [c for c in cases if not c.get("skipped")]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4.2), squeeze=False)
    for ax, c in zip(axes[0], cases):
        names = list(c["profiles"])
        pd = [c["profiles"][n]["capacity_pd_rps"] for n in names]
        ax.bar(range(len(names)), pd, color=["tab:green" if c["profiles"][n]["ratio_is_lower_bound"] else "tab:blue"
                                              for n in names], label="pd (green: lower bound)")
        ax.axhline(c["cloud_mode"]["capacity_rps"], color="k", ls="--", label="cloud mode")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set(yscale="log", ylabel="capacity (req/s at 90% TTFT <= SLO)",
               title=f"{c['trace']} ({'poisson' if c['arrivals'].startswith('poisson') else 'traced'}), "
                     f"{c['cloud_profile']}, SLO {c['slo_s']} s")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "trace-sim-capacity.png", dpi=100)
    plt.close(fig)
    plot_capacity(cases, out / "trace-sim-capacity-rate.png")
    plot_slo_sweeps(cases, out / "trace-sim-capacity-slo.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="bench/results")
    ap.add_argument("--traces", nargs="+", default=list(TRACES))
    ap.add_argument("--clouds", nargs="+", default=list(CLOUDS))
    ap.add_argument("--arrivals", nargs="+", default=["traced", "poisson"], choices=["traced", "poisson"])
    ap.add_argument("--profiles", nargs="+", default=list(DEVICE_PROFILES))
    ap.add_argument("--max-requests", type=int, default=200)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--traces-dir")
    ap.add_argument("--slos", nargs="*", type=float, default=[],
                    help="also sweep these TTFT SLOs (seconds): the ratio vs SLO (trace-sim-capacity-slo.png)")
    args = ap.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for trace in args.traces:
        for cloud in args.clouds:
            for arrivals in args.arrivals:
                case = run_case(trace, cloud, arrivals == "poisson", args.profiles, args.max_requests,
                                args.iterations, args.traces_dir, tuple(args.slos))
                cases.append(case)
                print(f"{trace} {cloud} {arrivals}: " + (case["skipped"] if case.get("skipped") else
                      f"SLO {case['slo_s']} s, cloud {case['cloud_mode']['capacity_rps']:.3g} req/s, "
                      f"{case['wall_s']:.0f} s"), flush=True)
                report = {"note": "simulated (pdlink.sim): costs from the named profiles; capacity = the highest "
                                  "arrival rate with >= 90% of requests at TTFT <= SLO", "table": table(cases),
                          "cases": cases}
                (out / "trace-sim-capacity.json").write_text(json.dumps(report, indent=1))
    plot(cases, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
