"""Command line of the cloud side: ``pdlink cloud serve`` and ``pdlink cloud probe`` (``add_cloud_commands``),
plus ``generate_via_cloud`` for ``pdlink generate --mode cloud`` (see :mod:`pdlink.cloud.generation`).
``python -m pdlink.cloud.cli serve|probe|generate|bench`` runs them without the main ``pdlink`` entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from pdlink.cloud.generation import CloudCLIError, client_ssl_context, generate_via_cloud, load_token

__all__ = ["add_cloud_commands", "generate_via_cloud", "cmd_serve", "cmd_probe", "CloudCLIError", "main"]

DEFAULT_URL = "ws://127.0.0.1:8765"


# ---------------------------------------------------------------------------------------------- serve


def _add_serve(sub) -> None:
    from pdlink.cloud.config import CloudConfig

    d = CloudConfig.__dataclass_fields__
    p = sub.add_parser("serve", help="serve the cloud prefill websocket (protocol v1)")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m, a .gguf file, an HF model dir, or a compiled package dir (runs on its engine)")
    p.add_argument("--model-id", default="", help="id announced to clients (default: derived from --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0 = any free port; the ready line names it)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"])
    p.add_argument("--threads", type=int, default=0, help="torch/TVM threads (0 = library default)")
    p.add_argument("--auth-token-file", help="file holding the bearer token (else $PDLINK_AUTH_TOKEN; none = no auth)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve wss://")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    for name in ("max_prompt_tokens", "max_leading_tokens", "max_concurrent_requests", "max_requests_per_connection",
                 "max_connections", "max_message_bytes", "max_batch_sequences", "step_token_budget",
                 "prefill_chunk_tokens"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=d[name].default)
    for name in ("ttft_budget_s", "handshake_timeout_s", "idle_timeout_s"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=d[name].default)
    p.add_argument("--no-warm-up", action="store_true", help="skip the warm-up request before accepting")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    """Run the server until SIGINT/SIGTERM; prints ``pdlink cloud ready on URL`` once accepting."""
    # NOTE: with threads that busy-wait, a server sharing its cores (with a device engine, tests, a
    # benchmark client) slowed down 4-20x here when one core was taken; sleeping waiters cost little.
    # Both must be set before torch/TVM start their pools; an explicit setting in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    from pdlink.cloud.backend import BackendError
    from pdlink.cloud.config import CloudConfig, load_auth_token
    from pdlink.cloud.server import CloudServer

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = ("max_prompt_tokens", "max_leading_tokens", "max_concurrent_requests", "max_requests_per_connection",
             "max_connections", "max_message_bytes", "max_batch_sequences", "step_token_budget",
             "prefill_chunk_tokens", "ttft_budget_s", "handshake_timeout_s", "idle_timeout_s")
    cfg = CloudConfig(model=args.model, model_id=args.model_id, host=args.host, port=args.port, device=args.device,
                      threads=args.threads, auth_token=load_auth_token(args.auth_token_file),
                      tls_cert=args.tls_cert, tls_key=args.tls_key, warm_up=not args.no_warm_up,
                      **{n: getattr(args, n) for n in names})
    try:
        server = CloudServer(cfg)
    except BackendError as exc:
        raise CloudCLIError(str(exc)) from exc

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.request_shutdown)
        await server.serve_forever(on_ready=lambda url: print(f"pdlink cloud ready on {url}", flush=True))

    asyncio.run(run())
    return 0


# ---------------------------------------------------------------------------------------------- probe


def _add_probe(sub) -> None:
    p = sub.add_parser("probe", help="connect to a cloud server, send one prompt, print handshake, TTFT, tokens")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--auth-token-file", help="file holding the bearer token (else $PDLINK_AUTH_TOKEN)")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-tokens", type=int, default=16, help="leading tokens to ask for (k)")
    p.add_argument("--model-id", default="smollm2-135m")
    p.add_argument("--ca-file", help="CA bundle to verify a wss:// server")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any one event")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    from pdlink.cloud.probe import probe

    report = asyncio.run(probe(args.url, prompt=args.prompt, max_tokens=args.max_tokens, model_id=args.model_id,
                               auth_token=load_token(args), ssl_context=client_ssl_context(args.url, args.ca_file),
                               timeout_s=args.timeout, out=sys.stdout))
    return 0 if report["ok"] else 1


# ---------------------------------------------------------------------------------------------- wiring


def add_cloud_commands(subparsers) -> None:
    """Register ``cloud serve`` and ``cloud probe`` on the main ``pdlink`` parser's subparsers."""
    p = subparsers.add_parser("cloud", help="the cloud prefill service")
    which = p.add_subparsers(dest="cloud_command", required=True)
    _add_serve(which)
    _add_probe(which)


def main(argv: list[str] | None = None) -> int:
    """``python -m pdlink.cloud.cli serve|probe|generate|bench ...``."""
    parser = argparse.ArgumentParser(prog="python -m pdlink.cloud.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_probe(sub)
    g = sub.add_parser("generate", help="cloud-only generation (same flags as pdlink generate --mode cloud)")
    g.add_argument("--cloud", default=DEFAULT_URL)
    g.add_argument("--auth-token-file")
    g.add_argument("--package")
    g.add_argument("--model-id")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompt-file")
    g.add_argument("--raw", action="store_true")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[])
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=lambda a: print(json.dumps(generate_via_cloud(a)) if a.json else
                                        generate_via_cloud(a)["text"]) or 0)
    b = sub.add_parser("bench", help="pdlink bench cloud")
    b.add_argument("--output", default="bench/results")
    b.add_argument("--trace", default="mooncake", choices=["mooncake", "azure_code"])
    b.add_argument("--num-requests", type=int, default=12)
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=lambda a: print(json.dumps(_bench(a)["summary"], indent=2)) or 0)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyboardInterrupt) as exc:
        print(f"pdlink: error: {exc}", file=sys.stderr)
        return 2


def _bench(args) -> dict:
    from pdlink.bench.cloud import CloudBenchConfig, run_cloud_bench

    cfg = CloudBenchConfig(trace=args.trace, num_requests=args.num_requests, threads=args.threads)
    return run_cloud_bench(args.output, cfg)


if __name__ == "__main__":
    sys.exit(main())
