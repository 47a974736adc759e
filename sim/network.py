"""The simulated link between a device and the cloud: every message takes one one-way delay (RTT / 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import simpy


@dataclass(frozen=True)
class Network:
    """A symmetric link; bandwidth is not modelled (protocol v1 frames are a few hundred bytes)."""

    rtt_s: float = 0.04

    def __post_init__(self):
        if self.rtt_s < 0:
            raise ValueError(f"rtt_s must be >= 0, got {self.rtt_s}")

    @property
    def one_way_s(self) -> float:
        return self.rtt_s / 2

    def deliver(self, env: simpy.Environment, call: Callable[..., None], *args) -> None:
        """Call ``call(*args)`` one one-way delay from now (no process per message: a timeout's callback)."""
        env.timeout(self.one_way_s).callbacks.append(lambda _event: call(*args))
