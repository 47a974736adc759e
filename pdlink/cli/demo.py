"""``pdlink demo``: the P/D-Device story on one machine, end to end.

Starts the cloud service (the same package) on loopback, then answers one long real-text prompt twice
under an emulated phone: in ``device`` mode (local only) and in ``pd`` mode (cloud prefill and first
tokens, device takes over). Prints the pd answer with each token's origin, both TTFTs, and writes the
pd timeline plot.
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
    p.add_argument("--device-profile", default="phone")
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
        finally:
            session.close()
    print()
    plot_timeline(pd.timeline, out / "demo-timeline.png", f"pd mode, {pd.prompt_tokens} prompt tokens, "
                  f"{args.device_profile} (emulated): TTFT {pd.ttft_s:.2f} s vs {device.ttft_s:.2f} s device-only")
    summary = {"prompt_tokens": pd.prompt_tokens, "ttft_device_s": device.ttft_s, "ttft_pd_s": pd.ttft_s,
               "ttft_reduction": 1 - pd.ttft_s / device.ttft_s, "handover_index": pd.handover_index,
               "cloud_tokens": pd.origins.count("cloud"), "device_tokens": pd.origins.count("device"),
               "fallback": pd.fallback, "max_gap_s": pd.max_gap_s, "cloud_busy_s": pd.cloud_busy_s,
               "same_answer_as_device_mode": pd.token_ids == device.token_ids,
               "timeline_plot": str(out / "demo-timeline.png")}
    (out / "demo.json").write_text(json.dumps({"summary": summary, "pd": pd.to_json(True),
                                               "device": device.to_json()}, indent=1))
    print(json.dumps(summary, indent=2))
    return 0
