"""``pdlink profile``: measure this device's prefill/decode speed for a package, once, and store it."""

from __future__ import annotations

import json
from pathlib import Path

from pdlink.edge.device_profile import measure_profile, profile_store_path, save_profile
from pdlink.edge.engine import Engine, EngineConfig


def add_arguments(p) -> None:
    p.add_argument("--package", required=True)
    p.add_argument("--threads", type=int, default=0, help="engine threads (0 = all cores)")
    p.add_argument("--output", default=None, help="profile file (default: the per-user store)")


def run(args) -> int:
    engine = Engine(EngineConfig(package=args.package, num_threads=args.threads, max_num_sequences=1))
    profile = measure_profile(engine)
    path = Path(args.output) if args.output else profile_store_path(engine.manifest.config_hash, engine.num_threads)
    save_profile(profile, path)
    print(json.dumps({"path": str(path), **profile.to_json()}, indent=2))
    return 0
