"""Plots of the trace benchmark: per-mode distributions from the ``trace-<mode>.json`` reports of a folder, and
cloud throughput against the number of devices from ``trace-sweep.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODES = ("device", "pd", "cloud")
COLORS = {"device": "tab:orange", "pd": "tab:blue", "cloud": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_reports(folder: str | Path) -> dict[str, dict]:
    """The replay reports present in ``folder``, by mode."""
    out = {}
    for mode in MODES:
        path = Path(folder) / f"trace-{mode}.json"
        if path.is_file():
            out[mode] = json.loads(path.read_text())
    return out


def _cdf(ax, values, label, color):
    v = np.sort(np.asarray([x for x in values if x is not None], dtype=float))
    if v.size:
        ax.step(np.concatenate([[0.0], v]), np.arange(v.size + 1) / v.size, where="post", label=label, color=color)


def plot_trace_reports(folder: str | Path, path: str | Path) -> Path | None:
    """TTFT CDF, max-gap CDF and cloud seconds per request for every mode whose report is in ``folder``;
    None when there is none."""
    reports = read_reports(folder)
    if not reports:
        return None
    plt = _pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2))
    for mode, rep in reports.items():
        recs = rep["records"]
        label = f"{mode} (n={len(recs)})"
        _cdf(a, [r["ttft_s"] for r in recs], label, COLORS[mode])
        _cdf(b, [r["max_gap_s"] * 1000 for r in recs], label, COLORS[mode])
    for ax, xlabel in ((a, "TTFT (s)"), (b, "max gap between shown tokens (ms)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    modes = [m for m in MODES if m in reports]
    busy = [[r["cloud_busy_s"] for r in reports[m]["records"]] for m in modes]
    c.boxplot(busy, showmeans=True)
    c.set_xticks(range(1, len(modes) + 1), modes)
    for i, vals in enumerate(busy, start=1):
        c.plot(np.full(len(vals), i) + np.linspace(-0.08, 0.08, len(vals)), vals, ".", color=COLORS[modes[i - 1]])
    c.set_ylabel("cloud busy seconds per request")
    c.grid(alpha=0.3)
    rep = next(iter(reports.values()))
    cfg = rep["config"]
    fig.suptitle(f"trace {rep.get('trace_name', cfg['trace'])}: {rep.get('devices', cfg['devices'])} devices, "
                 f"{cfg['device_profile']} (emulated), RTT {cfg['net_rtt_ms']:.0f} ms, "
                 f"cloud {cfg['cloud_threads']} thread(s) on this machine", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _nan(value):
    return float("nan") if value is None else value


def plot_sweep(sweep: dict, path: str | Path) -> Path:
    """Cloud throughput (requests per cloud-busy second), TTFT p50 and cloud utilization against devices."""
    plt = _pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2))
    for mode, points in sweep["points"].items():
        n = [p["devices"] for p in points]
        a.plot(n, [_nan(p["requests_per_cloud_busy_s"]) for p in points], "o-", label=mode, color=COLORS[mode])
        for p in points:  # requests that gave the cloud up (no point at all when every one did)
            if p["fallback_rate"]:
                a.annotate(f"{mode}: {p['fallback_rate']:.0%} fell back", (p["devices"], 0.03 + 0.06 * (mode == "pd")),
                           xycoords=("data", "axes fraction"), fontsize=7, color=COLORS[mode], ha="center")
        b.plot(n, [_nan(p["ttft_p50_s"]) for p in points], "o-", label=mode, color=COLORS[mode])
        c.plot(n, [_nan(p["cloud_utilization"]) for p in points], "o-", label=mode, color=COLORS[mode])
        sat = sweep["saturation_devices"].get(mode)
        if sat is not None:
            b.axvline(sat, color=COLORS[mode], ls=":", alpha=0.7)
    a.set_ylabel("requests per cloud-busy second")
    b.set_ylabel("TTFT p50 (s); dotted: saturation")
    c.set_ylabel("cloud busy / wall")
    for ax in (a, b, c):
        ax.set_xlabel("devices")
        ax.set_xticks(sweep["device_counts"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    cfg = sweep["config"]
    fig.suptitle(f"cloud throughput vs devices: {cfg['trace']} ({sweep['requests']} requests, closed loop), "
                 f"{cfg['device_profile']} (emulated), cloud {cfg['cloud_threads']} thread(s) on this machine",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
