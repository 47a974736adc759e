"""``pdlink serve``: the desktop assistant, an OpenAI-compatible local server with a chat page at ``/``."""

from __future__ import annotations

import logging

from pdlink.cli.flags import add_flags

FLAGS = ("package", "cloud", "host", "port", "mode", "model_id", "max_concurrency", "kept_conversations",
         "context_window", "default_max_tokens", "threads", "prefill_chunk", "device_profile", "max_gap_ms", "refine", "net_rtt_ms",
         "auth_token_file", "shutdown_grace_s")


def add_arguments(p) -> None:
    from pdlink.assistant.config import AssistantConfig

    p.add_argument("--config", default=None, help="a .toml or .json file of these settings (flags override it)")
    # Every default is None here: a flag given overrides the config file, one not given leaves the file's value
    # (and the config's own default, see pdlink/assistant/config.py).
    add_flags(p, AssistantConfig, FLAGS, defaults={n: None for n in FLAGS}, helps={
        "package": "compiled package directory", "cloud": "cloud prefill service, ws://HOST:PORT (pd / cloud mode)",
        "port": "HTTP port (default 8000)", "mode": "default mode of a request: pd (default with --cloud), device, cloud",
        "max_concurrency": "requests in flight at once (default 4); more get 429",
        "kept_conversations": "conversations whose KV cache is kept for the next turn (default 4)",
        "context_window": "tokens per sequence (default 2048)",
        "device_profile": "emulate a device profile (edge/device_profile.py)",
        "shutdown_grace_s": "on shutdown, seconds in-flight requests get to finish before they are cancelled"})
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(args) -> int:
    import uvicorn

    from pdlink.assistant.app import create_app
    from pdlink.assistant.config import build_config
    from pdlink.assistant.service import Assistant

    cfg = build_config(args.config, **{n: getattr(args, n) for n in FLAGS})
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    assistant = Assistant(cfg)
    print(f"pdlink assistant: http://{cfg.host}:{cfg.port}/ (model {assistant.model_id}, default mode "
          f"{cfg.default_mode}, cloud {cfg.cloud or 'none'})", flush=True)
    uvicorn.run(create_app(assistant), host=cfg.host, port=cfg.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=cfg.shutdown_grace_s + 2)  # streams get the grace first (app.py)
    return 0
