"""The assistant process's one config: a frozen dataclass, from a TOML/JSON file, flags override it.

    # assistant.toml
    package = "packages/smollm2-135m-q4_1-host"
    cloud = "ws://127.0.0.1:8765"
    port = 8000
    max_concurrency = 4
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pdlink.common.package import MAX_BATCH_SIZE
from pdlink.edge.device_profile import resolve_profile
from pdlink.edge.session import MODES
from pdlink.edge.session_settings import REFINE_MODES


@dataclass(frozen=True)
class AssistantConfig:
    """What ``pdlink serve`` runs: the package, the cloud, the HTTP address, limits and the session defaults."""

    package: str = ""
    cloud: str | None = None  # ws://host:port of the cloud prefill service (pd / cloud mode)
    host: str = "127.0.0.1"
    port: int = 8000
    mode: str | None = None  # default mode of a request: pd with a cloud, else device
    model_id: str | None = None  # the name /v1/models lists (default: the package's model)
    max_concurrency: int = 4  # requests in flight at once; more are refused with 429
    kept_conversations: int = 4  # finished conversations whose KV cache is kept for their next turn
    context_window: int = 2048  # per sequence; the KV cache holds (max_concurrency + kept_conversations) of them
    default_max_tokens: int = 256  # when a request gives no max_tokens (clipped to the context left)
    threads: int = 0  # engine threads (0 = all cores)
    prefill_chunk: int = 128  # prompt tokens per engine step: others' streams wait at most one chunk
    device_profile: str | None = None  # emulate a device (edge/device_profile.py), None = this machine
    max_gap_ms: float = 50.0
    refine: str = "off"
    net_rtt_ms: float = 0.0  # emulated network round trip to the cloud (benchmarks, demos)
    auth_token_file: str | None = None
    shutdown_grace_s: float = 10.0  # on shutdown, in-flight requests get this long to finish, then are cancelled

    def __post_init__(self):
        if not self.package:
            raise ValueError("package is required: --package DIR (a compiled package) or package = \"DIR\" in the config file")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.default_mode != "device" and not self.cloud:
            raise ValueError(f"mode {self.default_mode!r} needs a cloud: --cloud ws://HOST:PORT")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_concurrency < 1 or self.kept_conversations < 0:
            raise ValueError("max_concurrency must be >= 1 and kept_conversations >= 0")
        if self.max_concurrency + self.kept_conversations > MAX_BATCH_SIZE:
            raise ValueError(f"max_concurrency + kept_conversations must be <= {MAX_BATCH_SIZE}")
        if self.context_window < 16 or self.default_max_tokens < 1 or self.prefill_chunk < 1:
            raise ValueError("context_window must be >= 16, default_max_tokens and prefill_chunk >= 1")
        if self.max_gap_ms <= 0 or self.net_rtt_ms < 0 or self.shutdown_grace_s < 0 or self.threads < 0:
            raise ValueError("max_gap_ms must be > 0; net_rtt_ms, shutdown_grace_s and threads >= 0")
        if self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {self.refine!r}")
        if self.device_profile is not None:
            resolve_profile(self.device_profile)  # raises with the list of names, or the file's bad field

    @property
    def default_mode(self) -> str:
        return self.mode or ("pd" if self.cloud else "device")


FIELDS = tuple(f.name for f in dataclasses.fields(AssistantConfig))


def load_config_file(path: str | Path) -> dict:
    """The settings in a ``.toml`` or ``.json`` file, checked against the config's fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path}: {exc}") from exc
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path}: {exc}") from exc
    else:
        raise ValueError(f"config file {path}: use a .toml or .json file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a table of settings")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"config file {path}: unknown setting(s) {unknown}; known: {', '.join(FIELDS)}")
    return data


def build_config(file: str | Path | None = None, **overrides) -> AssistantConfig:
    """The config from ``file`` (if any) with ``overrides`` on top (None values do not override)."""
    values = load_config_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AssistantConfig(**values)
    except TypeError as exc:
        raise ValueError(f"bad config: {exc}") from exc
