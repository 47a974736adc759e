"""Settings v2 against an exhaustive grid search and against v1, on a real trace's requests (model only, no engine).

For every sampled request (prompt length L and answer length from the trace) and every device profile:
v2's decision (``pdlink.edge.settings_v2``) and its time, the grid search's optimum over the same timeline model
(``pdlink.edge.settings_grid``) and its time, and v1's decision (``decide_settings``) judged by the same model.
Writes ``settings.json`` and ``settings.png`` under ``output_dir``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from pdlink.edge.device_profile import named_profile
from pdlink.edge.session_settings import CloudEstimate, decide_settings
from pdlink.edge.settings_grid import grid_search
from pdlink.edge.settings_model import predict
from pdlink.edge.settings_v2 import decide_settings_v2
from pdlink.traces import load_trace

PROFILES = ("phone-cpu", "phone-gpu", "phone-npu", "laptop-cpu", "laptop-gpu")
TOLERANCE = 0.05  # v2 agrees when its cloud seconds are within 5% of the grid optimum's, constraints met


def run_settings_bench(output_dir: str | Path, trace: str = "azure_code", *, traces_dir: str | None = None,
                       profiles: tuple[str, ...] = PROFILES, max_requests: int = 200, max_prompt_tokens: int = 8000,
                       max_output_tokens: int = 512, max_gap_s: float = 0.05, ttft_slo_s: float | None = None,
                       refine: str = "off", keep_ratio: float = 0.5, cloud: CloudEstimate | None = None,
                       seed: int = 0) -> dict:
    """Run the comparison and write ``settings.json`` + ``settings.png``; returns the report. ``trace``: a named
    trace or a file (``pdlink.traces.load_trace``; folder from ``traces_dir``, else $PDLINK_TRACES_DIR or
    ../shared/traces); requests are a seeded sample of ``max_requests``, prompts cut to ``max_prompt_tokens``
    and answers to ``max_output_tokens`` (both stated in the JSON)."""
    cloud = cloud or CloudEstimate()
    workload = load_trace(trace, traces_dir)
    if len(workload) > max_requests:
        workload = workload.sample(max_requests, seed=seed)
    pairs = [(max(1, min(r.input_tokens, max_prompt_tokens)), max(1, min(r.output_tokens, max_output_tokens)))
             for r in workload]
    common = dict(max_gap_s=max_gap_s, ttft_slo_s=ttft_slo_s, refine=refine, keep_ratio=keep_ratio)
    results = {}
    for name in profiles:
        device = named_profile(name)
        rows = []
        for L, m in pairs:
            t0 = time.perf_counter()
            v2 = decide_settings_v2(L, m, device, cloud, max_k=max_output_tokens, **common)
            v2_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            grid = grid_search(L, m, device, cloud, max_k=max_output_tokens, **common)
            grid_ms = (time.perf_counter() - t0) * 1000
            v1 = decide_settings(L, m, device, cloud, max_gap_s=max_gap_s, refine=refine, keep_ratio=keep_ratio,
                                 max_k=max_output_tokens)
            p2, p1 = predict(L, m, v2, device, cloud, max_gap_s=max_gap_s), predict(L, m, v1, device, cloud,
                                                                                   max_gap_s=max_gap_s)
            best = grid.prediction.cloud_busy_s
            rows.append({"prompt_tokens": L, "max_tokens": m, "v2_ms": v2_ms, "grid_ms": grid_ms,
                         "v2_cloud_s": p2.cloud_busy_s, "grid_cloud_s": best, "v1_cloud_s": p1.cloud_busy_s,
                         "v2_feasible": p2.feasible, "v1_feasible": p1.feasible, "v2_k": v2.k, "grid_k": grid.k,
                         "v1_k": v1.k, "v2_use_cloud": v2.use_cloud,
                         "agree": bool(p2.feasible and p2.cloud_busy_s <= (1 + TOLERANCE) * best + 1e-9)})
        results[name] = _summary(rows, device)
    report = {
        "trace": str(trace), "requests": len(pairs), "seed": seed, "tolerance": TOLERANCE,
        "config": {"max_prompt_tokens": max_prompt_tokens, "max_output_tokens": max_output_tokens,
                   "max_gap_s": max_gap_s, "ttft_slo_s": ttft_slo_s, "refine": refine, "keep_ratio": keep_ratio,
                   "cloud": vars(cloud)},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "note": "model-only: decision times are this machine's Python, single thread"},
        "profiles": results,
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(report, indent=2))
    plot_settings_bench(report, out / "settings.png")
    return report


def _summary(rows: list[dict], device) -> dict:
    v2_ms, grid_ms = np.array([r["v2_ms"] for r in rows]), np.array([r["grid_ms"] for r in rows])
    total = {k: float(sum(r[k] for r in rows)) for k in ("v2_cloud_s", "grid_cloud_s", "v1_cloud_s")}
    return {
        "source": device.source, "agreement": float(np.mean([r["agree"] for r in rows])),
        "v2_feasible": float(np.mean([r["v2_feasible"] for r in rows])),
        "v1_feasible": float(np.mean([r["v1_feasible"] for r in rows])),
        "cloud_used": float(np.mean([r["v2_use_cloud"] for r in rows])),
        "decision_ms": {"v2_p50": float(np.percentile(v2_ms, 50)), "v2_p99": float(np.percentile(v2_ms, 99)),
                        "grid_p50": float(np.percentile(grid_ms, 50)), "grid_p99": float(np.percentile(grid_ms, 99))},
        "cloud_s": {**total, "v2_over_v1": total["v2_cloud_s"] / total["v1_cloud_s"] if total["v1_cloud_s"] else None},
        "requests": rows,
    }


def plot_settings_bench(report: dict, path: Path) -> None:
    """Cloud seconds (v1, v2, grid) and decision times (v2, grid) per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["profiles"])
    res = report["profiles"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(names))
    for i, (key, label) in enumerate((("v1_cloud_s", "v1"), ("v2_cloud_s", "v2"), ("grid_cloud_s", "grid optimum"))):
        axes[0].bar(x + (i - 1) * 0.27, [res[n]["cloud_s"][key] for n in names], 0.27, label=label)
    for xi, n in zip(x, names):
        axes[0].annotate(f"{res[n]['agreement']:.0%}", (xi, res[n]["cloud_s"]["v2_cloud_s"]), ha="center",
                         va="bottom", fontsize=8)
    axes[0].set(title=f"cloud busy seconds, {report['requests']} requests of {report['trace']} "
                      "(label: v2 within 5% of the grid)", ylabel="cloud seconds (sum)", xticks=x, xticklabels=names)
    axes[0].legend()
    for i, (key, label) in enumerate((("v2_p50", "v2 p50"), ("v2_p99", "v2 p99"), ("grid_p50", "grid p50"),
                                      ("grid_p99", "grid p99"))):
        axes[1].bar(x + (i - 1.5) * 0.2, [res[n]["decision_ms"][key] for n in names], 0.2, label=label)
    axes[1].set(title="decision time per request", ylabel="ms", yscale="log", xticks=x, xticklabels=names)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
