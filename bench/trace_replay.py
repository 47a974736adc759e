"""``pdlink bench trace`` (replay): a real trace sent by emulated devices to one real cloud service on loopback.

``cfg.devices`` devices, each the real engine slowed to ``cfg.device_profile`` with its own session, take the
trace's requests round-robin (one at a time each, a request starting at max(arrival, device free)) and run
them in ``cfg.mode`` against a ``pdlink cloud serve`` child process with the same package. Prompts are real
text cut to the trace's lengths, answers have the trace's lengths (capped, ``ignore_eos``), sampling is greedy.
Writes ``trace-<mode>.json`` (the report of ``traces/report.py``), ``trace-<mode>-tokens.json`` (answers,
for the lossless check against device mode) and ``trace.png`` (every mode's report in the folder).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from pdlink.bench.replay_rig import ReplayRig, ReplayRun
from pdlink.bench.replay_tokens import prompt_digest, update_lossless, write_tokens
from pdlink.traces.report import MODES, RequestRecord, TraceBenchConfig, summarize


def run_trace_replay(cfg: TraceBenchConfig) -> dict:
    """Replay ``cfg.trace`` in ``cfg.mode``; writes the report, the answers' sidecar and the plots into
    ``cfg.output`` and returns the report. Raises FileNotFoundError / TraceFormatError / ValueError for a bad
    trace, folder or profile before anything is built or started."""
    return run_trace_replays(cfg, (cfg.mode,))[cfg.mode]


def run_trace_replays(cfg: TraceBenchConfig, modes: tuple[str, ...] = ("pd", "device", "cloud")) -> dict[str, dict]:
    """The same requests replayed in each of ``modes`` in turn on one set-up (one cloud server, the devices'
    engines loaded once); each mode's report and sidecar as ``run_trace_replay`` writes them, then the
    lossless check against device mode and the plots. Returns mode -> report."""
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be some of {MODES}, got {modes}")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reports = {}
    with ReplayRig(cfg, with_cloud=any(m != "device" for m in modes)) as rig:
        setup_s = time.perf_counter() - t0
        for mode in modes:
            mode_cfg = replace(cfg, mode=mode)
            run = rig.replay(mode)
            reports[mode] = replay_report(mode_cfg, rig, run, setup_s=setup_s)
            (out / mode_cfg.report_name).write_text(json.dumps(reports[mode], indent=1))
            write_tokens(out, mode, records_of(run),
                         {o.request.index: prompt_digest(o.request.prompt_ids) for o in run.outcomes})
    for mode, result in update_lossless(out).items():
        if mode in reports:
            reports[mode]["lossless"] = result
    from pdlink.bench.trace_plots import plot_trace_reports

    plot_trace_reports(out, out / "trace.png")
    return reports


def records_of(run: ReplayRun) -> list[RequestRecord]:
    """One ``RequestRecord`` per request (times from the request's own submission to its device's session)."""
    return [RequestRecord.from_result(o.request.index, o.request.arrival_s, o.result,
                                      device_wait_s=o.start_s - o.request.arrival_s) for o in run.outcomes]


def replay_report(cfg: TraceBenchConfig, rig: ReplayRig, run: ReplayRun, setup_s: float = 0.0) -> dict:
    """The report of one pass (``summarize``) with what this replay adds: the machine, the cloud server, the
    emulation, wall time, cloud throughput, per-request device waits and the requests' trace lengths."""
    from pdlink.bench.engine import machine_info

    records = records_of(run)
    waits = [r.device_wait_s for r in records]
    welcome = next((o.result.emulation.get("cloud_server") for o in run.outcomes
                    if o.result.emulation.get("cloud_server")), None)
    extra = {
        "trace_name": rig.workload.name, "devices": run.devices, "wall_s": run.wall_s, "setup_s": setup_s,
        "machine": machine_info(cfg.device_threads * run.devices + cfg.cloud_threads),
        "cloud_server": None if rig.health is None else {
            "welcome": welcome, "backend": rig.health.get("backend"), "threads": cfg.cloud_threads,
            "model_id": rig.health.get("model_id"), "package": rig.package},
        "package": rig.package,
        "emulation": rig.emulation_label(),
        "cloud_busy_s_server": run.cloud_busy_s,
        "cloud_throughput": throughput(run),
        "device_wait_s": waits,
        "host_slower_steps": [o.result.emulation["device"].get("host_slower_steps") for o in run.outcomes],
        "trace_lengths": [{"index": o.request.index, "prompt_tokens": o.request.trace_prompt_tokens,
                           "output_tokens": o.request.trace_output_tokens} for o in run.outcomes],
        "note": "ttft_s and e2e_s of each record count from the request's submission by its device; "
                "device_wait_s is how long it waited for its device to become free (ttft_from_arrival adds it)",
    }
    return summarize(cfg, records, extra)


def throughput(run: ReplayRun) -> dict:
    """Completed requests per cloud-busy second (the server's own busy time) and per wall second."""
    n = len(run.outcomes)
    busy = run.cloud_busy_s
    return {"requests": n, "wall_s": run.wall_s, "cloud_busy_s": busy,
            "requests_per_cloud_busy_s": n / busy if busy else None,
            "requests_per_wall_s": n / run.wall_s if run.wall_s else None,
            "cloud_utilization": busy / run.wall_s if busy is not None and run.wall_s else None}
