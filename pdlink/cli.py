"""The ``pdlink`` command line: compile, generate, chat, bench, cloud."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CLIError(Exception):
    """An error to show the user as one line, exit status 2."""


def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile a model into a package for a target")
    p.add_argument("--model", required=True, help="smollm2-135m, a .gguf file, or an HF model directory")
    p.add_argument("--target", default="host", help="target preset (see `pdlink targets`)")
    p.add_argument("--quant", default="q4_1", help="f32, f16, q4f16, q4f32, q4_1")
    p.add_argument("--output", "-o", required=True, help="package directory to write")
    p.add_argument("--prefill-chunk-size", type=int, default=2048)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_compile)


def _cmd_compile(args) -> int:
    from pdlink.compile.builder import CompileConfig, build_package

    cfg = CompileConfig(
        model=args.model, target=args.target, quant=args.quant, output=args.output,
        prefill_chunk_size=args.prefill_chunk_size, show_progress=not args.quiet,
    )
    build_package(cfg)
    return 0


def _cmd_targets(args) -> int:
    from pdlink.compile.target import target_presets

    for preset in target_presets().values():
        print(f"{preset.name:22s} {preset.lib_format:4s} {preset.description}")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a reply to one prompt")
    p.add_argument("--package", help="compiled package directory (device and pd modes)")
    p.add_argument("--mode", default="device", choices=["device", "cloud", "pd"])
    p.add_argument("--cloud", help="cloud service URL, ws://host:port (cloud and pd modes)")
    p.add_argument("--auth-token-file", help="file holding the cloud's bearer token")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file holding the prompt text")
    p.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="engine threads (0 = all cores)")
    p.add_argument("--context", type=int, default=0, help="context window in tokens (0 = the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--show-origin", action="store_true", help="mark where tokens came from ([cloud] / [device])")
    p.add_argument("--timeline", default=None, help="write the request's timeline plot (PNG) here")
    p.add_argument("--timeline-json", action="store_true", help="include the timeline events in --json output")
    from pdlink.edge.session_cli import add_session_arguments

    add_session_arguments(p)
    p.set_defaults(func=_cmd_generate)


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    path = Path(args.prompt_file)
    if not path.is_file():
        raise CLIError(f"prompt file {args.prompt_file!r} does not exist")
    return path.read_text()


def _cmd_generate(args) -> int:
    from pdlink.common.sampling import SamplingParams

    if args.mode in ("cloud", "pd") and not args.cloud:
        raise CLIError(f"--cloud ws://HOST:PORT is required in {args.mode} mode")
    if args.mode == "cloud" and not args.package:
        from pdlink.cloud.cli import generate_via_cloud

        result = generate_via_cloud(args)
        print(json.dumps(result) if args.json else result["text"])
        return 0
    if not args.package:
        raise CLIError(f"--package is required in {args.mode} mode")
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    prompt = _read_prompt(args)
    if args.stop:
        if args.mode != "device":
            raise CLIError("--stop works in device mode only (pd and cloud sessions stop at end-of-turn tokens)")
        return _generate_device_with_stops(args, prompt, sampling)
    from pdlink.edge.session_cli import generate_with_session

    return generate_with_session(args, prompt, sampling)


def _generate_device_with_stops(args, prompt: str, sampling) -> int:
    from pdlink.edge.engine import Engine, EngineConfig
    from pdlink.edge.generator import Generation, GenerationConfig

    gen_cfg = GenerationConfig(max_tokens=args.max_tokens, sampling=sampling, stop_strings=tuple(args.stop))
    engine = Engine(EngineConfig(package=args.package, num_threads=args.threads, context_window=args.context,
                                 max_num_sequences=1))
    prompt_ids = engine.tokenizer.encode(prompt) if args.raw else engine.tokenizer.encode_chat(prompt)
    gen = Generation(engine, prompt_ids, gen_cfg)
    times = []
    for event in gen:
        times.append(event.time_s)
        if not args.json:
            print(event.text, end="", flush=True)
    if args.json:
        out = _result_json(gen.result, args.mode)
        gaps = [b - a for a, b in zip(times, times[1:])]
        out.update(ttft_s=gen.result.prefill_s, handover_index=None, origins=["device"] * len(gen.result.token_ids),
                   fallback=None, max_gap_s=max(gaps, default=0.0), cloud_busy_s=0.0)
        print(json.dumps(out))
    else:
        print(gen.tail_text)
    return 0


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="terminal chat with a package (streaming)")
    p.add_argument("--package", required=True)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cloud", default=None, help="cloud URL: each turn runs in pd mode (cloud first token)")
    p.add_argument("--auth-token-file", default=None)
    p.add_argument("--show-origin", action="store_true", help="mark cloud and device tokens in the reply")
    from pdlink.edge.session_cli import add_session_arguments

    add_session_arguments(p)
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args) -> int:
    from pdlink.edge.chat import ChatSession, user_lines
    from pdlink.edge.engine import Engine, EngineConfig
    from pdlink.edge.generator import GenerationConfig
    from pdlink.common.sampling import SamplingParams

    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.cloud:
        from pdlink.edge.session_cli import chat_with_session

        return chat_with_session(args, sampling)
    engine = Engine(EngineConfig(package=args.package, num_threads=args.threads, max_num_sequences=1))
    chat = ChatSession(engine, GenerationConfig(max_tokens=args.max_tokens, sampling=sampling), args.system)
    print("pdlink chat — empty line or Ctrl-D to quit", file=sys.stderr)
    for line in user_lines():
        for event in chat.ask(line):
            print(event.text, end="", flush=True)
        print(chat.tail_text)
    chat.close()
    return 0


def _result_json(result, mode: str) -> dict:
    tokens = len(result.token_ids)
    return {
        "text": result.text,
        "token_ids": result.token_ids,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": tokens,
        "finish_reason": result.finish_reason,
        "mode": mode,
        "prefill_s": result.prefill_s,
        "decode_s": result.decode_s,
        "prefill_tok_s": result.prompt_tokens / result.prefill_s if result.prefill_s else None,
        "decode_tok_s": (tokens - 1) / result.decode_s if tokens > 1 and result.decode_s else None,
    }


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (JSON + plots)")
    which = p.add_subparsers(dest="bench", required=True)
    e = which.add_parser("engine", help="pdlink packages vs llama.cpp and transformers")
    e.add_argument("--output", default="bench/results")
    e.add_argument("--threads", type=int, default=0, help="threads for every engine (0 = all cores)")
    e.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    e.add_argument("--decode-tokens", type=int, default=64)
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--engines", nargs="+", default=["pdlink-q4_1", "pdlink-f32", "llama.cpp", "transformers"])
    e.set_defaults(func=_cmd_bench_engine)
    ss = which.add_parser("session", help="pd vs device vs cloud mode: TTFT, shown-token gaps, cloud busy time")
    ss.add_argument("--output", default="bench/results")
    ss.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ss.add_argument("--max-tokens", type=int, default=128)
    ss.add_argument("--device-profile", default="phone")
    ss.add_argument("--net-rtt-ms", type=float, default=40.0)
    ss.add_argument("--package", default=None, help="compiled package (default: q4_1 of SmolLM2, built on demand)")
    ss.add_argument("--cloud-backend", choices=("package", "package-f32", "torch"), default="package",
                    help="the cloud's model: the device's own 4-bit package (default; pd == device), the "
                         "float32 package, or transformers float32")
    ss.add_argument("--no-refinement", action="store_true", help="skip the prompt-refinement measurements")
    ss.add_argument("--cloud-threads", type=int, default=2, help="the cloud server's thread budget")
    ss.add_argument("--device-threads", type=int, default=1, help="the device engine's thread budget")
    ss.set_defaults(func=_cmd_bench_session)
    c = which.add_parser("cloud", help="cloud service under Poisson load from the shared traces")
    c.add_argument("--output", default="bench/results")
    c.set_defaults(func=_cmd_bench_cloud)


def _cmd_bench_engine(args) -> int:
    from pdlink.bench.engine import EngineBenchConfig, run_engine_bench

    cfg = EngineBenchConfig(
        output=args.output, threads=args.threads, lengths=tuple(args.lengths), decode_tokens=args.decode_tokens,
        repeats=args.repeats, engines=tuple(args.engines),
    )
    report = run_engine_bench(cfg)
    keys = ("decode_ratio_q4_vs_llamacpp", "prefill_ratio_q4_vs_llamacpp", "decode_ratio_f32_vs_transformers",
            "rss_ratio_q4_vs_llamacpp")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"wrote {Path(args.output) / 'engine.json'} and engine.png")
    return 0


def _cmd_bench_session(args) -> int:
    from pdlink.bench.session import SessionBenchConfig, run_session_bench

    cfg = SessionBenchConfig(output=args.output, lengths=tuple(args.lengths), max_tokens=args.max_tokens,
                             device_profile=args.device_profile, net_rtt_ms=args.net_rtt_ms, package=args.package,
                             cloud_backend=args.cloud_backend, refinement=not args.no_refinement,
                             cloud_threads=args.cloud_threads, device_threads=args.device_threads)
    report = run_session_bench(cfg)
    keys = ("ttft_reduction_2k", "max_gap_s", "p99_gap_s", "cloud_busy_ratio_pd_vs_cloud")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"wrote {Path(args.output) / 'session.json'}, session.png and session-timeline-*.png")
    return 0


def _cmd_bench_cloud(args) -> int:
    from pdlink.bench.cloud import run_cloud_bench

    report = run_cloud_bench(args.output)
    print(json.dumps(report.get("summary", {}), indent=2))
    print(f"wrote {Path(args.output) / 'cloud.json'} and cloud.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdlink", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_compile(sub)
    sub.add_parser("targets", help="list target presets").set_defaults(func=_cmd_targets)
    _add_generate(sub)
    _add_chat(sub)
    _add_bench(sub)
    from pdlink.edge.session_cli import add_profile_command
    from pdlink.edge.session_demo import add_demo_command

    add_profile_command(sub)
    add_demo_command(sub)
    from pdlink.cloud.cli import add_cloud_commands

    add_cloud_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pdlink.compile.checkpoint import CheckpointError
    from pdlink.edge.engine import PromptTooLongError
    from pdlink.common.package import PackageError

    try:
        return args.func(args)
    except (CLIError, CheckpointError, PackageError, PromptTooLongError, ValueError, FileNotFoundError,
            KeyboardInterrupt) as exc:
        print(f"pdlink: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
