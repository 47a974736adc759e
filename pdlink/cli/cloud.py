"""``pdlink cloud serve`` (the cloud prefill websocket, protocol v1) and ``pdlink cloud probe``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from pdlink.cli.errors import CLIError
from pdlink.cli.flags import add_flags, flag_values
from pdlink.cloud.cluster.config import ClusterConfig
from pdlink.cloud.config import CloudConfig
from pdlink.common.credentials import client_ssl_context, load_auth_token
from pdlink.common.models import DEFAULT_MODEL

SERVE_FLAGS = ("model", "model_id", "host", "port", "device", "threads", "max_prompt_tokens", "max_leading_tokens",
               "max_concurrent_requests", "max_requests_per_connection", "max_connections", "max_message_bytes",
               "max_batch_sequences", "step_token_budget", "prefill_chunk_tokens", "decode_stall_s", "ttft_budget_s",
               "handshake_timeout_s", "idle_timeout_s", "tls_cert", "tls_key", "min_step_s")
SERVE_HELP = {
    "model": f"{DEFAULT_MODEL}, a .gguf file, an HF model dir, or a compiled package dir (runs on its engine)",
    "model_id": "id announced to clients (default: derived from --model)",
    "port": "TCP port (0 = any free port; the ready line names it)",
    "device": "cpu, cuda or npu", "threads": "torch/TVM threads (0 = library default)",
    "tls_cert": "PEM certificate chain: serve wss://", "tls_key": "PEM private key for --tls-cert",
    "decode_stall_s": "while requests stream tokens, a step prefills others' prompts for at most this long at the "
                      "measured speed (0 = no bound: a long prompt may stall the streams)",
    "min_step_s": "hold each step to at least this many seconds: emulates a slower or busier cloud (tests, "
                  "benchmarks; 0 = off)",
}


CLUSTER_FLAGS = ("cluster", "prefill", "decode", "groups", "router", "prefill_slots", "decode_slots", "baseline_queue",
                 "instance_threads", "instance_cpus", "ray_cpus", "report_interval_s", "retry_s")
CLUSTER_HELP = {
    "cluster": "serve through a gateway over prefill/decode instances: local (start Ray here), ray://HOST:PORT "
               "(join a Ray cluster) or inproc (no Ray); unset = one server",
    "prefill": "prefill instances per scenario group", "decode": "decode instances per scenario group",
    "groups": "scenario group rule NAME:app=ID,prefix=HEX,min_tokens=N,max_tokens=N (repeatable; docs/cluster.md)",
    "router": "on_demand (forwarding upon rejection) or queue_report (the baseline)",
    "instance_cpus": "Ray CPUs reserved per instance (fractional is fine)",
}


def add_arguments(p) -> None:
    which = p.add_subparsers(dest="cloud_command", required=True)
    serve = which.add_parser("serve", help="serve the cloud prefill websocket (protocol v1)")
    add_flags(serve, CloudConfig, SERVE_FLAGS, helps=SERVE_HELP)
    add_flags(serve, ClusterConfig, CLUSTER_FLAGS, helps=CLUSTER_HELP, defaults={"cluster": None},
              rename={"groups": "group"})
    serve.add_argument("--no-kv-transfer", action="store_true",
                       help="cluster: decode instances re-prefill instead of importing the prefill's KV")
    serve.add_argument("--auth-token-file",
                       help="file holding the bearer token (else $PDLINK_AUTH_TOKEN; none = no auth)")
    serve.add_argument("--no-warm-up", action="store_true", help="skip the warm-up request before accepting")
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(cloud_func=_serve)
    probe = which.add_parser("probe", help="connect to a cloud server, send one prompt, print handshake, TTFT, tokens")
    probe.add_argument("--url", default="ws://127.0.0.1:8765")
    probe.add_argument("--auth-token-file", help="file holding the bearer token (else $PDLINK_AUTH_TOKEN)")
    probe.add_argument("--prompt", default="What is the capital of France?")
    probe.add_argument("--max-tokens", type=int, default=16, help="leading tokens to ask for (k)")
    probe.add_argument("--model-id", default=DEFAULT_MODEL)
    probe.add_argument("--ca-file", help="CA bundle to verify a wss:// server")
    probe.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any one event")
    probe.set_defaults(cloud_func=_probe)


def run(args) -> int:
    return args.cloud_func(args)


def _serve(args) -> int:
    """Run the server until SIGINT/SIGTERM; prints ``pdlink cloud ready on URL`` once accepting."""
    # NOTE: with threads that busy-wait, a server sharing its cores (with a device engine, tests, a
    # benchmark client) slowed down 4-20x here when one core was taken; sleeping waiters cost little.
    # Both must be set before torch/TVM start their pools; an explicit setting in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    from pdlink.cloud.backend import BackendError
    from pdlink.cloud.server import CloudServer

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = CloudConfig(**flag_values(args, SERVE_FLAGS), auth_token=load_auth_token(args.auth_token_file),
                      warm_up=not args.no_warm_up)
    try:
        server = _gateway(args, cfg) if args.cluster else CloudServer(cfg)
    except BackendError as exc:
        raise CLIError(str(exc)) from exc

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.request_shutdown)
        await server.serve_forever(on_ready=lambda url: print(f"pdlink cloud ready on {url}", flush=True))

    asyncio.run(serve())
    return 0


def _gateway(args, cfg: CloudConfig):
    """The disaggregated cloud behind one protocol v1 endpoint (``--cluster``)."""
    from pdlink.cloud.cluster.gateway import Gateway

    try:
        cluster = ClusterConfig(**flag_values(args, CLUSTER_FLAGS), transfer_kv=not args.no_kv_transfer)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    return Gateway(cfg, cluster)


def _probe(args) -> int:
    from pdlink.cloud.probe import probe

    report = asyncio.run(probe(args.url, prompt=args.prompt, max_tokens=args.max_tokens, model_id=args.model_id,
                               auth_token=load_auth_token(args.auth_token_file),
                               ssl_context=client_ssl_context(args.url, args.ca_file), timeout_s=args.timeout,
                               out=sys.stdout))
    return 0 if report["ok"] else 1
