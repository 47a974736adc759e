"""Command-line surfaces of the P/D session: ``generate --mode pd|device|cloud`` on a package, ``chat`` with
a cloud, and ``pdlink profile``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_session_arguments(p) -> None:
    """Options shared by ``generate`` and ``chat`` for the session (cloud, emulation, limits)."""
    p.add_argument("--device-profile", default=None, help="emulate a device: phone or laptop (labeled in the output)")
    p.add_argument("--net-rtt-ms", type=float, default=0.0, help="emulated network round trip added to loopback")
    p.add_argument("--net-jitter-ms", type=float, default=0.0, help="emulated one-way jitter, uniform 0..X ms")
    p.add_argument("--net-bandwidth-mbps", type=float, default=0.0, help="emulated bandwidth (0 = unlimited)")
    p.add_argument("--max-gap-ms", type=float, default=50.0, help="bound on the gap between shown cloud tokens")
    p.add_argument("--cloud-ca-file", default=None, help="CA bundle for a wss:// cloud")
    p.add_argument("--model-id", default=None, help="model id announced to the cloud (default: the package's)")
    p.add_argument("--refine", choices=("off", "auto", "on"), default="off",
                   help="pd mode: prefill only the prompt tokens the cloud marks as important (lossy; "
                        "auto = when it brings the hand-over clearly earlier)")
    p.add_argument("--refine-keep", type=float, default=0.5, help="share of the prompt a refined prompt keeps")


def build_session(args, max_num_threads: int | None = None):
    """A ``Session`` from parsed arguments (``--package`` required)."""
    from pdlink.common.models import default_model_id
    from pdlink.cloud.generation import load_token
    from pdlink.edge.cloud_link import CloudTarget
    from pdlink.edge.emulation import NetworkEmulation
    from pdlink.edge.session import Session, SessionConfig

    cloud = None
    if getattr(args, "cloud", None):
        cloud = CloudTarget(args.cloud, auth_token=load_token(args), ca_file=args.cloud_ca_file,
                            model_id=args.model_id or default_model_id(args.package))
    network = NetworkEmulation(rtt_ms=args.net_rtt_ms, jitter_ms=args.net_jitter_ms,
                               bandwidth_mbps=args.net_bandwidth_mbps)
    cfg = SessionConfig(package=args.package, cloud=cloud, device_profile=args.device_profile, network=network,
                        threads=getattr(args, "threads", 0), context_window=getattr(args, "context", 0),
                        max_gap_s=args.max_gap_ms / 1000, refine=args.refine, refine_keep_ratio=args.refine_keep)
    return Session(cfg)


def generate_with_session(args, prompt: str, sampling) -> int:
    """``pdlink generate`` on a package in any mode; prints text (or ``--json``)."""
    session = build_session(args)
    try:
        previous = None
        for tok in session.generate(prompt, mode=args.mode, max_tokens=args.max_tokens, sampling=sampling,
                                    raw=args.raw):
            if not args.json:
                print(_marked(tok, getattr(args, "show_origin", False), previous), end="", flush=True)
            previous = tok.origin
        result = session.last
    finally:
        session.close()
    if getattr(args, "timeline", None):
        from pdlink.edge.timeline import plot_timeline

        plot_timeline(result.timeline, args.timeline, _title(result))
    if args.json:
        print(json.dumps(result.to_json(with_timeline=getattr(args, "timeline_json", False))))
    else:
        print()
        print(_summary(result), file=sys.stderr)
    return 0


def chat_with_session(args, sampling) -> int:
    """``pdlink chat --cloud URL``: each turn is a pd request over the whole conversation."""
    from pdlink.edge.chat import user_lines

    session = build_session(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("pdlink chat (pd mode) -- empty line or Ctrl-D to quit", file=sys.stderr)
    try:
        for line in user_lines():
            messages.append({"role": "user", "content": line})
            ids = session.tokenizer.encode(session.tokenizer.apply_chat_template(messages))
            previous = None
            for tok in session.generate(ids, mode="pd", max_tokens=args.max_tokens, sampling=sampling):
                print(_marked(tok, args.show_origin, previous), end="", flush=True)
                previous = tok.origin
            print()
            print(_summary(session.last), file=sys.stderr)
            messages.append({"role": "assistant", "content": session.last.text})
    finally:
        session.close()
    return 0


def _marked(tok, show_origin: bool, previous_origin: str | None) -> str:
    """The token's text, preceded by ``[origin]`` where the origin changes (when asked)."""
    if not show_origin or tok.origin == previous_origin:
        return tok.text
    return f"[{tok.origin}]{tok.text}"


def _title(result) -> str:
    emu = result.emulation["device"]
    device = f"{emu['device_profile']} (emulated)" if emu.get("device_profile") else "this machine"
    return (f"{result.mode} mode, {result.prompt_tokens} prompt tokens, device {device}, TTFT {result.ttft_s or 0:.2f} s, "
            f"hand-over at {result.handover_index}, fallback {result.fallback}")


def _summary(result) -> str:
    origins = result.origins
    return (f"[{result.mode}] TTFT {result.ttft_s or 0:.2f} s | {origins.count('cloud')} cloud + "
            f"{origins.count('device')} device tokens | hand-over {result.handover_index} | "
            f"max gap {result.max_gap_s * 1000:.0f} ms | cloud busy {result.cloud_busy_s} s | fallback {result.fallback}"
            + (f" | refined prompt {result.refinement}" if result.refinement else ""))


def add_profile_command(sub) -> None:
    p = sub.add_parser("profile", help="measure this device's prefill/decode speed for a package and store it")
    p.add_argument("--package", required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--output", default=None, help="profile file (default: the per-user store)")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    from pdlink.edge.device_profile import measure_profile, profile_store_path, save_profile
    from pdlink.edge.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(package=args.package, num_threads=args.threads, max_num_sequences=1))
    profile = measure_profile(engine)
    path = Path(args.output) if args.output else profile_store_path(engine.manifest.config_hash, engine.num_threads)
    save_profile(profile, path)
    print(json.dumps({"path": str(path), **profile.to_json()}, indent=2))
    return 0
