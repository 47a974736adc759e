"""Capacity ratio (pd / cloud mode) as a function of the TTFT SLO: where the device's own prefill starts to
carry the load. One point per SLO and device profile, from ``capacity_comparison`` (the same bisection, the
same attainment rule for the requests the cloud helps); the probes are left out to keep the result small."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pdlink.bench.trace_sim import _pyplot, capacity_comparison
from pdlink.traces.report import TraceBenchConfig


def slo_sweep(cfg: TraceBenchConfig, profiles: list[str], slos: list[float], iterations: int = 6) -> list[dict]:
    """For each SLO (seconds): cloud mode's capacity and, per device profile, pd's capacity, the ratio, whether
    it is a lower bound, and at pd's capacity the share of requests the device answered alone and the SLO
    attainment among those the cloud helped (how well the cloud still serves its share)."""
    points = []
    for slo in sorted(slos):
        comp = capacity_comparison(replace(cfg), profiles, slo, iterations=iterations)
        point = {"slo_s": slo, "capacity_cloud_rps": comp["cloud_mode"]["capacity_rps"], "profiles": {}}
        for name, entry in comp["profiles"].items():
            passing = [p for p in entry["pd"]["probes"] if p["rate_rps"] <= entry["capacity_pd_rps"] * 1.001]
            at_capacity = passing[-1] if passing else entry["pd"]["probes"][0]
            point["profiles"][name] = {
                "capacity_pd_rps": entry["capacity_pd_rps"], "ratio": entry["ratio"],
                "ratio_is_lower_bound": entry["ratio_is_lower_bound"],
                "device_alone_rate": at_capacity["device_alone_rate"],
                "attainment_cloud_assisted": at_capacity.get("attainment_cloud_assisted"),
                "cloud_busy_s_per_request": at_capacity["cloud_busy_s_per_request"]}
        points.append(point)
    return points


def plot_slo_sweeps(cases: list[dict], path: Path) -> None:
    """Ratio vs SLO, one panel per case with a sweep; lower bounds drawn hollow and capped at the panel top."""
    plt = _pyplot()
    cases = [c for c in cases if c.get("slo_sweep")]
    if not cases:
        return
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4.2), squeeze=False)
    for ax, case in zip(axes[0], cases):
        sweep = case["slo_sweep"]
        names = list(sweep[0]["profiles"])
        for name in names:
            xs = [p["slo_s"] for p in sweep]
            ys = [min(p["profiles"][name]["ratio"] or 0.0, 100.0) for p in sweep]
            line, = ax.plot(xs, ys, "-o", ms=4, label=name)
            hollow = [(x, y) for x, y, p in zip(xs, ys, sweep) if p["profiles"][name]["ratio_is_lower_bound"]]
            if hollow:
                ax.plot(*zip(*hollow), "o", ms=8, mfc="none", color=line.get_color())
        ax.axhline(10, color="k", ls=":", lw=1, label="10x")
        ax.set(yscale="log", xlabel="TTFT SLO (s)", ylabel="capacity pd / cloud mode",
               title=f"{case['trace']}, {case['cloud_profile']} ({'poisson' if case['arrivals'].startswith('poisson') else 'traced'})")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
