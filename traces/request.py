"""One request of a trace: when it arrives and how long its prompt and answer are."""

from __future__ import annotations

from dataclasses import dataclass

MOONCAKE_BLOCK_TOKENS = 512  # one Mooncake hash id stands for this many prompt tokens


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """A trace row. ``arrival_s``: seconds after the workload's first request; ``hash_ids``: Mooncake's prefix
    block ids (one per :data:`MOONCAKE_BLOCK_TOKENS` prompt tokens; equal leading ids = shared prefix), empty for
    traces without them."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.arrival_s >= 0:
            raise ValueError(f"arrival_s must be >= 0 (seconds after the first request), got {self.arrival_s}")
        if self.input_tokens < 0 or self.output_tokens < 0:
            raise ValueError(f"token lengths must be >= 0, got input {self.input_tokens}, "
                             f"output {self.output_tokens}")
        if any(h < 0 for h in self.hash_ids):
            raise ValueError(f"hash ids must be >= 0, got {self.hash_ids}")
