"""``pdlink demo``: the P/D-Device story on one machine, end to end.

Starts the cloud service (the same package) on loopback, then answers one long real-text prompt three
times under an emulated device: in ``device`` mode (local only), in ``pd`` mode (cloud prefill and first
tokens, the device takes over and releases the cloud) and in ``cloud`` mode (the cloud makes every token).
Prints the pd answer with each token's origin, the TTFTs, the cloud seconds pd used against cloud-only
mode, and writes the pd timeline plot (the hand-over marked); when no hand-over could pay off, it says why.

The default device is a laptop CPU (84 prefill tok/s): this machine's CPU cloud prefills faster than that,
so the device can catch up. A device that prefills faster than the local cloud (a phone NPU, a laptop GPU)
is shown by the simulator (``pdlink bench trace --simulate``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pdlink.cli.output import colored
from pdlink.cloud.server_process import ServerProcess
from pdlink.common.real_text import build_prompt
from pdlink.edge.cloud_link import CloudTarget
from pdlink.edge.emulation import NetworkEmulation
from pdlink.edge.session import Session, SessionConfig
from pdlink.edge.timeline import plot_timeline

INSTRUCTION = "Explain the following text to a beginner, step by step and in detail."


def add_arguments(p) -> None:
    p.add_argument("--package", required=True)
    p.add_argument("--prompt-tokens", type=int, default=600, help="length of the real-text prompt")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--device-profile", default="laptop", help="a named device profile or a JSON profile file")
    p.add_argument("--net-rtt-ms", type=float, default=40.0)
    p.add_argument("--output", default="bench/results", help="folder for the timeline plot and demo.json")


def run(args) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    print(f"starting the cloud service on loopback (package {args.package}, 1 thread) ...", file=sys.stderr)
    with ServerProcess("--model", args.package, "--threads", "1", "--max-prompt-tokens", "4096",
                       "--prefill-chunk-tokens", "1024", "--step-token-budget", "2048", "--ttft-budget-s", "300",
                       log_path=out / "demo-server.log") as server:
        url = server.wait_ready(timeout_s=300)
        session = Session(SessionConfig(package=args.package, cloud=CloudTarget(url, event_timeout_s=300),
                                        device_profile=args.device_profile, threads=1,
                                        network=NetworkEmulation(rtt_ms=args.net_rtt_ms, jitter_ms=5, seed=1)))
        try:
            ids = build_prompt(session.tokenizer, args.prompt_tokens, INSTRUCTION)
            print(f"prompt: {len(ids)} tokens of the Python language reference, {INSTRUCTION!r}\n"
                  f"device: {args.device_profile} (emulated: {session.profile.source})\n", file=sys.stderr)
            print("[device mode] ...", file=sys.stderr)
            device = session.complete(ids, mode="device", max_tokens=args.max_tokens)
            print("[pd mode] (cyan: cloud tokens, yellow: device tokens)\n", file=sys.stderr)
            for tok in session.generate(ids, mode="pd", max_tokens=args.max_tokens):
                print(colored(tok), end="", flush=True)
            pd = session.last
            print("\n[cloud mode] ...", file=sys.stderr)
            cloud = session.complete(ids, mode="cloud", max_tokens=args.max_tokens)
        finally:
            session.close()
    print()
    plot_timeline(pd.timeline, out / "demo-timeline.png", f"pd mode, {pd.prompt_tokens} prompt tokens, "
                  f"{args.device_profile} (emulated): TTFT {pd.ttft_s:.2f} s vs {device.ttft_s:.2f} s device-only")
    summary = {"prompt_tokens": pd.prompt_tokens, "ttft_device_s": device.ttft_s, "ttft_pd_s": pd.ttft_s,
               "ttft_reduction": 1 - pd.ttft_s / device.ttft_s, "handover_index": pd.handover_index,
               "cloud_tokens": pd.origins.count("cloud"), "device_tokens": pd.origins.count("device"),
               "fallback": pd.fallback, "max_gap_s": pd.max_gap_s, "cloud_busy_s": pd.cloud_busy_s,
               "cloud_busy_s_cloud_mode": cloud.cloud_busy_s,
               "cloud_seconds_pd_vs_cloud_mode": _ratio(pd.cloud_busy_s, cloud.cloud_busy_s),
               "cloud_stopped_at": (pd.cloud_done or {}).get("stop_after_index"),
               "same_answer_as_device_mode": pd.token_ids == device.token_ids,
               "why_no_handover": None if pd.handover_index is not None else _why_no_handover(pd),
               "timeline_plot": str(out / "demo-timeline.png")}
    (out / "demo.json").write_text(json.dumps({"summary": summary, "pd": pd.to_json(True),
                                               "device": device.to_json(), "cloud": cloud.to_json()}, indent=1))
    print(json.dumps(summary, indent=2))
    if pd.handover_index is not None:
        print(f"the device took over after {pd.handover_index} cloud tokens; the cloud worked {pd.cloud_busy_s:.2f} s "
              f"for this answer against {cloud.cloud_busy_s:.2f} s in cloud-only mode", file=sys.stderr)
    else:
        print(f"no hand-over: {summary['why_no_handover']}", file=sys.stderr)
    return 0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _why_no_handover(result) -> str:
    """Why the device never took over, from the settings the session chose and what happened."""
    if result.fallback:
        return f"the device went on alone: {result.fallback}"
    settings = result.settings
    return (f"the cloud made all {len(result.token_ids)} tokens (k = {settings.get('k_after_estimate')}): "
            f"{settings.get('reason')}; a device that prefills faster, a longer answer, or a refined prompt "
            f"(--refine) would let it catch up")
