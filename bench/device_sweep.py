"""Cloud throughput against the number of devices: the same requests replayed by 1, 2, 4, ... emulated devices
against one cloud server, in cloud mode (the cloud makes every token) and pd mode (the cloud prefills and makes
the leading tokens). The load is a closed loop (every arrival at 0: each device sends its next request when
its previous one is done), so N devices keep N requests in flight and the cloud's capacity shows.

Per point: completed requests per cloud-busy second (the server's own busy time), per wall second, cloud
utilization (busy / wall) and TTFT; a mode's saturation is the fewest devices at which its TTFT p50 grows past
``SATURATION_TTFT_GROWTH`` times the one-device value. Writes ``trace-sweep.json`` and ``trace-throughput.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from pdlink.bench.replay_rig import ReplayRig
from pdlink.bench.trace_replay import records_of, throughput
from pdlink.traces.report import TraceBenchConfig

SATURATION_TTFT_GROWTH = 1.5
DEFAULT_DEVICE_COUNTS = (1, 2, 4)


def run_device_sweep(cfg: TraceBenchConfig, device_counts: tuple[int, ...] = DEFAULT_DEVICE_COUNTS,
                     modes: tuple[str, ...] = ("cloud", "pd")) -> dict:
    """Replay ``cfg``'s requests with each device count in each mode (one server, engines loaded once);
    writes ``trace-sweep.json`` and ``trace-throughput.png`` into ``cfg.output`` and returns the sweep.
    Raises ValueError for an empty or non-positive device count list or a mode without the cloud."""
    counts = tuple(sorted(set(device_counts)))
    if not counts or counts[0] < 1:
        raise ValueError(f"device counts must be >= 1, got {device_counts}")
    if not modes or any(m not in ("cloud", "pd") for m in modes):
        raise ValueError(f"the sweep compares cloud and pd mode; got modes {modes}")
    t0 = time.perf_counter()
    points: dict[str, list[dict]] = {m: [] for m in modes}
    with ReplayRig(replace(cfg, devices=max(counts)), with_cloud=True) as rig:
        requests = [replace(r, arrival_s=0.0) for r in rig.requests]
        welcome = rig.health
        for n in counts:
            for mode in modes:
                run = rig.replay(mode, n, requests)
                points[mode].append(_point(run))
                p = points[mode][-1]
                print(f"  {n:3d} devices {mode:5s} {p['requests_per_cloud_busy_s'] or 0:6.2f} req/cloud-s "
                      f"ttft p50 {p['ttft_p50_s']:.2f} s  util {p['cloud_utilization'] or 0:.2f}", flush=True)
        emulation, package, n_requests = rig.emulation_label(), rig.package, len(requests)
    from pdlink.bench.engine import machine_info

    sweep = {
        "device_counts": list(counts), "modes": list(modes), "requests": n_requests,
        "points": points, "saturation_devices": {m: saturation(points[m]) for m in modes},
        "throughput_gain_pd_vs_cloud": _gains(points) if {"pd", "cloud"} <= set(modes) else None,
        "load": "closed loop: every request arrives at 0, each device sends its next request when the previous "
                "is done (N devices = N requests in flight)",
        "saturation_rule": f"fewest devices whose TTFT p50 exceeds {SATURATION_TTFT_GROWTH}x the fewest-device "
                           "value (None: not reached)",
        "cloud_server": welcome, "package": package, "emulation": emulation,
        "machine": machine_info(cfg.device_threads * max(counts) + cfg.cloud_threads),
        "wall_s": time.perf_counter() - t0, "config": asdict(cfg),
    }
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trace-sweep.json").write_text(json.dumps(sweep, indent=1))
    from pdlink.bench.trace_plots import plot_sweep

    plot_sweep(sweep, out / "trace-throughput.png")
    return sweep


def _point(run) -> dict:
    records = records_of(run)
    ttft = [r.ttft_s for r in records if r.ttft_s is not None]
    return {"devices": run.devices, **throughput(run),
            "ttft_p50_s": float(np.percentile(ttft, 50)) if ttft else None,
            "ttft_p99_s": float(np.percentile(ttft, 99)) if ttft else None,
            "e2e_p50_s": float(np.percentile([r.e2e_s for r in records], 50)),
            "max_gap_s": max(r.max_gap_s for r in records),
            "cloud_busy_s_per_request": float(np.mean([r.cloud_busy_s for r in records])),
            "cloud_tokens_per_request": float(np.mean([r.cloud_tokens for r in records])),
            "handover_rate": float(np.mean([r.handover_index is not None for r in records])),
            "fallback_rate": float(np.mean([r.fallback is not None for r in records]))}


def saturation(points: list[dict]) -> int | None:
    """The fewest devices whose TTFT p50 grew past ``SATURATION_TTFT_GROWTH`` times the first point's."""
    base = points[0]["ttft_p50_s"] if points else None
    if not base:
        return None
    return next((p["devices"] for p in points if p["ttft_p50_s"] and p["ttft_p50_s"] > SATURATION_TTFT_GROWTH * base),
                None)


def _gains(points: dict[str, list[dict]]) -> list[dict]:
    """pd's requests per cloud-busy second over cloud mode's, per device count."""
    out = []
    for p, c in zip(points["pd"], points["cloud"]):
        ratio = (p["requests_per_cloud_busy_s"] / c["requests_per_cloud_busy_s"]
                 if p["requests_per_cloud_busy_s"] and c["requests_per_cloud_busy_s"] else None)
        out.append({"devices": p["devices"], "pd_over_cloud": ratio})
    return out
