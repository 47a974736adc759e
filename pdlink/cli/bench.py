"""``pdlink bench engine|session|cloud|serve|trace|trace-sweep|kv``: the benchmarks, each writing JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from pdlink.cli.flags import add_flags, flag_values

ENGINE = ("threads", "lengths", "decode_tokens", "repeats", "engines", "target", "arm64_mix")
SESSION = ("lengths", "max_tokens", "device_profile", "net_rtt_ms", "package", "cloud_backend", "cloud_threads",
           "device_threads")
CLOUD = ("trace", "num_requests", "threads", "traces_dir")
TRACE = ("trace", "traces_dir", "devices", "mode", "device_profile", "cloud_profile", "simulate", "max_requests",
         "max_output_tokens", "min_prompt_tokens", "max_prompt_tokens", "rate_scale", "ttft_slo_s", "settings_version",
         "poisson", "max_gap_ms", "net_rtt_ms", "cloud_threads", "device_threads", "pin_cores", "package", "seed")
SERVE = ("trace", "num_requests", "prompt_scale", "max_prompt_tokens", "leading_tokens", "rate_rps", "ttft_slo_s",
         "prefill", "decode", "prefill_slots", "cluster", "instance_threads", "kv_lengths", "kv_transports", "seed",
         "traces_dir")
SWEEP = tuple(n for n in TRACE if n not in ("devices", "mode", "cloud_profile", "simulate", "rate_scale", "poisson"))  # closed loop


ASSISTANT = ("clients", "prompt_chars", "max_tokens", "net_rtt_ms", "cloud_threads",
             "device_threads", "package")


def add_arguments(p) -> None:
    from pdlink.bench.cloud import CloudBenchConfig
    from pdlink.bench.engine import EngineBenchConfig
    from pdlink.bench.session import SessionBenchConfig
    from pdlink.traces.report import TraceBenchConfig

    which = p.add_subparsers(dest="bench", required=True)
    from pdlink.bench.assistant import AssistantBenchConfig

    a = which.add_parser("assistant", help="the desktop assistant (pdlink serve) under concurrent chat clients: "
                                           "TTFT and gaps, pd vs device, second turn with vs without prefix reuse")
    a.add_argument("--output", default="bench/results")
    add_flags(a, AssistantBenchConfig, ASSISTANT)
    a.add_argument("--profiles", nargs="+", default=list(AssistantBenchConfig.profiles),
                   help="emulated device profiles (edge/device_profile.py)")
    a.add_argument("--modes", nargs="+", default=list(AssistantBenchConfig.modes), help="pd and/or device")
    a.set_defaults(bench_func=_assistant)
    e = which.add_parser("engine", help="pdlink packages vs llama.cpp and transformers")
    e.add_argument("--output", default="bench/results")
    add_flags(e, EngineBenchConfig, ENGINE, helps={"threads": "threads for every engine (0 = all cores)",
                                                   "target": "compile target of the pdlink packages: host, or "
                                                             "x86_64-avx2 to measure the AVX2 kernels",
                                                   "arm64_mix": "also compile the linux-arm64 package and report the "
                                                                "instruction mix of its matmul kernels"})
    e.set_defaults(bench_func=_engine)
    s = which.add_parser("session", help="pd vs device vs cloud mode: TTFT, shown-token gaps, cloud busy time")
    s.add_argument("--output", default="bench/results")
    add_flags(s, SessionBenchConfig, SESSION, helps={
        "package": "compiled package (default: q4_1 of SmolLM2, built on demand)",
        "cloud_backend": "the cloud's model: package (the device's own 4-bit package; pd == device), "
                         "package-f32 (the float32 package) or torch (transformers float32)",
        "cloud_threads": "the cloud server's thread budget", "device_threads": "the device engine's thread budget"})
    s.add_argument("--no-refinement", action="store_true", help="skip the prompt-refinement measurements")
    s.set_defaults(bench_func=_session)
    c = which.add_parser("cloud", help="cloud service under Poisson load from the shared traces")
    c.add_argument("--output", default="bench/results")
    add_flags(c, CloudBenchConfig, CLOUD, helps={"trace": "mooncake, azure_code, or a .csv / .jsonl trace file",
                                                 "traces_dir": "folder of the named traces (else $PDLINK_TRACES_DIR, "
                                                               "else ../shared/traces)"})
    c.set_defaults(bench_func=_cloud)
    sv = which.add_parser("serve", help="the disaggregated cloud: KV transfer contiguous vs block, and a real small "
                                        "cluster under a Mooncake-trace load, on-demand forwarding vs queue reports")
    sv.add_argument("--output", default="bench/results")
    from pdlink.bench.serve import ServeBenchConfig

    add_flags(sv, ServeBenchConfig, SERVE, helps={
        "cluster": "local (a Ray runtime here), ray://HOST:PORT or inproc",
        "kv_lengths": "sequence lengths (tokens) of the KV transfer comparison"})
    sv.set_defaults(bench_func=_serve)
    st = which.add_parser("settings", help="settings v2 against an exhaustive grid search and v1 on a trace's "
                                           "requests: agreement, decision time, cloud seconds")
    st.add_argument("--output", default="bench/results")
    st.add_argument("--trace", default="azure_code", help="azure_code, mooncake, or a .csv / .jsonl trace file")
    st.add_argument("--traces-dir", default=None)
    st.add_argument("--max-requests", type=int, default=200)
    st.add_argument("--ttft-slo-s", type=float, default=None)
    st.add_argument("--refine", default="off", choices=("off", "auto", "on"))
    st.set_defaults(bench_func=_settings)
    t = which.add_parser("trace", help="a real trace replayed by emulated devices against the cloud on loopback, "
                                       "or simulated at scale (--simulate): TTFT, gaps, cloud seconds, hand-overs")
    t.add_argument("--output", default="bench/results")
    add_flags(t, TraceBenchConfig, TRACE, helps={
        "trace": "azure_code, mooncake, or a .csv / .jsonl trace file",
        "devices": "emulated devices, each sending one request at a time", "mode": "pd, device or cloud",
        "device_profile": "a named device profile or a JSON file with its fields",
        "cloud_profile": "with --simulate: a named cloud profile", "simulate": "the discrete-event simulator",
        "max_requests": "cap for run time", "max_output_tokens": "cap for run time",
        "min_prompt_tokens": "only requests with at least this many prompt tokens",
        "rate_scale": "arrivals this many times faster than the trace's",
        "settings_version": "pd settings: 2 (fewest cloud seconds, SLO-aware) or 1 (closed form)",
        "pin_cores": "replay: the cloud server on its own cores (--cloud-threads), the devices on the next ones",
        "poisson": "with --simulate: arrivals re-timed as a Poisson process at the trace's mean rate (--seed)"})
    t.add_argument("--modes", nargs="+", choices=["pd", "device", "cloud"],
                   help="replay: these modes in turn on one set-up (one server, engines loaded once), one report "
                        "each, and the lossless check of pd and cloud against device (instead of --mode)")
    t.set_defaults(bench_func=_trace)
    w = which.add_parser("trace-sweep", help="cloud throughput vs number of emulated devices, cloud vs pd mode "
                                             "(the trace's requests replayed closed-loop on loopback)")
    w.add_argument("--output", default="bench/results")
    # Small by default (a few minutes on two shared cores): 8 requests, prompts cut to 512, answers to 32 tokens.
    add_flags(w, TraceBenchConfig, SWEEP, defaults={"max_requests": 8, "max_prompt_tokens": 512, "max_output_tokens": 32},
              helps={"trace": "azure_code, mooncake, or a .csv / .jsonl trace file",
                     "device_profile": "a named device profile or a JSON file"})
    w.add_argument("--device-counts", nargs="+", type=int, default=[1, 2, 4], help="devices per point")
    w.add_argument("--modes", nargs="+", default=["cloud", "pd"], choices=["cloud", "pd"])
    w.set_defaults(bench_func=_trace_sweep)
    _add_kv(which)


def run(args) -> int:
    return args.bench_func(args)


def _assistant(args) -> int:
    from pdlink.bench.assistant import AssistantBenchConfig, run_assistant_bench

    report = run_assistant_bench(AssistantBenchConfig(output=args.output, profiles=tuple(args.profiles),
                                                      modes=tuple(args.modes), **flag_values(args, ASSISTANT)))
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {Path(args.output) / 'assistant.json'} and assistant.png")
    return 0


def _engine(args) -> int:
    from pdlink.bench.engine import EngineBenchConfig, run_engine_bench

    report = run_engine_bench(EngineBenchConfig(output=args.output, **flag_values(args, ENGINE)))
    keys = ("kernel_path", "decode_ratio_q4_vs_llamacpp", "prefill_ratio_q4_vs_llamacpp",
            "prefill_ratio_q4_vs_best_peer", "decode_ratio_f32_vs_transformers", "rss_ratio_q4_vs_llamacpp", "why_null")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"wrote {Path(args.output) / 'engine.json'} and engine.png")
    return 0


def _session(args) -> int:
    from pdlink.bench.session import SessionBenchConfig, run_session_bench

    report = run_session_bench(SessionBenchConfig(output=args.output, refinement=not args.no_refinement,
                                                  **flag_values(args, SESSION)))
    keys = ("ttft_reduction_2k", "max_gap_s", "p99_gap_s", "cloud_busy_ratio_pd_vs_cloud")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"wrote {Path(args.output) / 'session.json'}, session.png and session-timeline-*.png")
    return 0


def _cloud(args) -> int:
    from pdlink.bench.cloud import CloudBenchConfig, run_cloud_bench

    report = run_cloud_bench(args.output, CloudBenchConfig(**flag_values(args, CLOUD)))
    print(json.dumps(report.get("summary", {}), indent=2))
    print(f"wrote {Path(args.output) / 'cloud.json'} and cloud.png")
    return 0


def _serve(args) -> int:
    from pdlink.bench.serve import ServeBenchConfig, run_serve_bench

    report = run_serve_bench(args.output, ServeBenchConfig(**flag_values(args, SERVE)))
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {Path(args.output) / 'serve.json'} and serve.png")
    return 0


def _trace(args) -> int:
    from pdlink.traces.report import TraceBenchConfig

    cfg = TraceBenchConfig(output=args.output, **flag_values(args, TRACE))
    keys = ("requests", "ttft_p50_s", "ttft_p99_s", "max_gap_s", "p99_gap_s", "cloud_busy_s_per_request",
            "handover_rate", "fallback_rate", "lossless")
    if args.modes and not cfg.simulate:
        from pdlink.bench.trace_replay import run_trace_replays

        reports = run_trace_replays(cfg, tuple(args.modes))
        print(json.dumps({m: {k: r.get(k) for k in keys} for m, r in reports.items()}, indent=2))
        print(f"wrote {', '.join(f'trace-{m}.json' for m in reports)} and trace.png into {args.output}")
        return 0
    if cfg.simulate:
        from pdlink.bench.trace_sim import run_trace_simulation as run_trace
    else:
        from pdlink.bench.trace_replay import run_trace_replay as run_trace
    report = run_trace(cfg)
    print(json.dumps({k: report.get(k) for k in keys}, indent=2))
    print(f"wrote {Path(args.output) / cfg.report_name}")
    return 0


def _settings(args) -> int:
    from pdlink.bench.settings import run_settings_bench

    report = run_settings_bench(args.output, args.trace, traces_dir=args.traces_dir, max_requests=args.max_requests,
                                ttft_slo_s=args.ttft_slo_s, refine=args.refine)
    print(json.dumps(report["profiles"], indent=2))
    print(f"wrote {Path(args.output) / 'settings.json'} and settings.png")
    return 0


def _trace_sweep(args) -> int:
    from pdlink.bench.device_sweep import run_device_sweep
    from pdlink.traces.report import TraceBenchConfig

    cfg = TraceBenchConfig(output=args.output, **flag_values(args, SWEEP))
    sweep = run_device_sweep(cfg, tuple(args.device_counts), tuple(args.modes))
    keys = ("device_counts", "saturation_devices", "throughput_gain_pd_vs_cloud")
    print(json.dumps({k: sweep.get(k) for k in keys}, indent=2))
    print(f"wrote {Path(args.output) / 'trace-sweep.json'} and trace-throughput.png")
    return 0


def _add_kv(which) -> None:
    from pdlink.bench.kv_transfer import KVBenchConfig
    from pdlink.cloud.kv.transfer import TRANSPORTS

    k = which.add_parser("kv", help="KV transfer time, contiguous vs block layout, per transport "
                                    "(the real model's KV shape; the receiver in another process)")
    k.add_argument("--output", default="bench/results")
    add_flags(k, KVBenchConfig, ("lengths", "repeats", "page_size"), helps={"lengths": "sequence lengths in tokens"})
    k.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(KVBenchConfig.transports))
    k.set_defaults(bench_func=_kv)


def _kv(args) -> int:
    from pdlink.bench.kv_transfer import KVBenchConfig, run_kv_transfer_bench

    cfg = KVBenchConfig(transports=tuple(args.transports), **flag_values(args, ("lengths", "repeats", "page_size")))
    report = run_kv_transfer_bench(args.output, cfg)
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {Path(args.output) / 'kv_transfer.json'} and kv_transfer.png")
    return 0
