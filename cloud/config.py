"""``CloudConfig``: every tunable of the cloud prefill server, checked once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pdlink.cloud.backend import BACKEND_DEVICES
from pdlink.common.models import DEFAULT_MODEL, default_model_id
from pdlink.common.protocol import DEFAULT_MAX_MESSAGE_BYTES, Limits
from pdlink.cloud.scheduler import SchedulerConfig

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class CloudConfig:
    """How ``pdlink cloud serve`` runs. Limits are per server unless named per connection."""

    model: str = DEFAULT_MODEL  # preset, .gguf file, HF directory, or compiled package directory
    model_id: str = ""  # announced in welcome; "" = derived from ``model``
    host: str = "127.0.0.1"
    port: int = 8765  # 0 = any free port (the ready line names it)
    device: str = "cpu"
    threads: int = 0  # torch / TVM threads; 0 = the library default
    auth_token: str | None = field(default=None, repr=False)  # None = no auth
    tls_cert: str | None = None
    tls_key: str | None = None
    max_prompt_tokens: int = 4096
    max_leading_tokens: int = 512  # k at most; large enough for cloud-only generation
    max_concurrent_requests: int = 64  # live requests in the whole server
    max_requests_per_connection: int = 16
    max_connections: int = 256
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ttft_budget_s: float = 10.0  # reject at once when the estimated TTFT is above this
    handshake_timeout_s: float = 10.0  # websocket upgrade, and hello after it
    idle_timeout_s: float = 300.0  # close a connection with nothing in flight and no frame for this long
    ping_interval_s: float = 20.0
    max_batch_sequences: int = 16  # sequences holding KV cache at once
    step_token_budget: int = 512
    prefill_chunk_tokens: int = 256
    decode_stall_s: float = 0.2  # while requests decode, a step prefills at most this long (0 = no bound)
    warm_up: bool = True
    min_step_s: float = 0.0  # hold each serving step to at least this long: emulates a slower/busier cloud; 0 = off

    def __post_init__(self):
        if self.device not in BACKEND_DEVICES:
            raise ValueError(f"device must be one of {', '.join(BACKEND_DEVICES)}, got {self.device!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0 = any free port), got {self.port}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0 (0 = the library default)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise ValueError(f"TLS file {path!r} does not exist")
        if self.auth_token is not None and not self.auth_token:
            raise ValueError("the auth token is empty; give a token or none")
        for name in ("max_prompt_tokens", "max_leading_tokens", "max_concurrent_requests",
                     "max_requests_per_connection", "max_connections", "max_batch_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be >= 1024 (a hello must fit)")
        if not 0.0 <= self.min_step_s <= 5.0:
            raise ValueError(f"min_step_s must be in 0..5 seconds (0 = off), got {self.min_step_s}")
        for name in ("ttft_budget_s", "handshake_timeout_s", "idle_timeout_s", "ping_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        self.scheduler_config()  # its own checks (chunk <= budget, ...)
        if not self.model_id:
            object.__setattr__(self, "model_id", default_model_id(self.model))
            log.info("model_id not given: announcing %r", self.model_id)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}"

    def limits(self) -> Limits:
        """What ``welcome`` announces (``max_concurrent_requests`` there is per connection)."""
        return Limits(max_prompt_tokens=self.max_prompt_tokens, max_leading_tokens=self.max_leading_tokens,
                      max_concurrent_requests=self.max_requests_per_connection,
                      max_message_bytes=self.max_message_bytes)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(step_token_budget=self.step_token_budget, prefill_chunk_tokens=self.prefill_chunk_tokens,
                               max_requests=self.max_concurrent_requests, ttft_budget_s=self.ttft_budget_s,
                               decode_stall_s=self.decode_stall_s)
