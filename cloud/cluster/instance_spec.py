"""``InstanceSpec``: what one prefill or decode instance loads and how big its batch is (checked once)."""

from __future__ import annotations

from dataclasses import dataclass

from pdlink.cloud.scheduler import SchedulerConfig


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One instance. ``slots`` is the prefill batch (requests held at once, until their KV has left) or the
    decode batch; ``max_queue`` > 0 only for the queue-report baseline (P/D-Serve's prefill keeps none)."""

    name: str
    role: str  # "prefill" | "decode"
    group: str
    model: str
    model_id: str = ""
    threads: int = 1
    slots: int = 4
    max_queue: int = 0
    context_window: int = 2048
    prefill_chunk_tokens: int = 256
    step_token_budget: int = 512
    min_step_s: float = 0.0  # CloudConfig.min_step_s: an emulated slower instance

    def __post_init__(self):
        if self.role not in ("prefill", "decode"):
            raise ValueError(f"instance {self.name}: role must be 'prefill' or 'decode', got {self.role!r}")
        if self.slots < 1 or self.max_queue < 0 or self.threads < 0:
            raise ValueError(f"instance {self.name}: need slots >= 1, max_queue >= 0 and threads >= 0")
        if self.context_window < 2:
            raise ValueError(f"instance {self.name}: context_window must be >= 2 tokens")
        self.scheduler_config()

    @property
    def capacity(self) -> int:
        """Requests the instance holds at most (batch slots + local queue)."""
        return self.slots + self.max_queue

    def scheduler_config(self) -> SchedulerConfig:
        # The slot count is the only admission rule: the TTFT budget is the gateway's (forwarding).
        return SchedulerConfig(step_token_budget=self.step_token_budget, prefill_chunk_tokens=self.prefill_chunk_tokens,
                               max_requests=self.capacity, ttft_budget_s=1e9)
