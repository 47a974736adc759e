"""Emulation for tests and benchmarks on one machine: a slower device and a slower network.

``EmulatedDevice`` runs every step on the real engine, then waits out the difference to the time the
named profile's device would need, so a timeline shows that device honestly (the work is real, only
the speed is the profile's). Steps the host is slower than the profile at are counted, never hidden.

``NetworkLink`` delays messages the way a link with the given RTT, jitter and bandwidth would, keeping
their order (one TCP stream). Both are labeled in every output that used them.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from pdlink.edge.device_profile import DeviceProfile


class EmulatedDevice:
    """The engine calls the session makes (``prefill``/``decode``), each taking the profile's time."""

    def __init__(self, engine, profile: DeviceProfile | None):
        """``profile=None``: no emulation, the engine's own speed."""
        self.engine, self.profile = engine, profile
        self._interrupt = threading.Event()
        self.reset_stats()

    def interrupt(self) -> None:
        """End the current emulated wait now (the request is over); the next step waits again."""
        self._interrupt.set()

    def reset_stats(self) -> None:
        """Start counting steps and times afresh (per request)."""
        self.steps = self.host_slower_steps = 0
        self.compute_s = self.waited_s = 0.0
        self._interrupt.clear()

    def prefill(self, seq_id: int, token_ids: list[int]) -> np.ndarray:
        context = self.engine.num_computed_tokens(seq_id)
        target = self.profile.prefill_time_s(len(token_ids), context) if self.profile else 0.0
        return self._timed(lambda: self.engine.prefill(seq_id, token_ids), target)

    def decode(self, seq_id: int, token_id: int) -> np.ndarray:
        context = self.engine.num_computed_tokens(seq_id)
        target = self.profile.decode_time_s(context) if self.profile else 0.0
        return self._timed(lambda: self.engine.decode(seq_id, token_id), target)

    def _timed(self, step, target_s: float) -> np.ndarray:
        t0 = time.perf_counter()
        logits = step()
        spent = time.perf_counter() - t0
        self.steps += 1
        self.compute_s += spent
        if self.profile is not None:
            if spent > target_s:
                self.host_slower_steps += 1
            else:
                t1 = time.perf_counter()
                self._interrupt.wait(target_s - spent)
                self.waited_s += time.perf_counter() - t1
        return logits

    def label(self) -> dict:
        """What was emulated, for the output."""
        if self.profile is None:
            return {"device_profile": None, "emulated": False}
        return {"device_profile": self.profile.name, "emulated": self.profile.emulated,
                "profile": self.profile.to_json(), "steps": self.steps,
                "host_slower_steps": self.host_slower_steps, "compute_s": self.compute_s, "waited_s": self.waited_s}


@dataclass(frozen=True)
class NetworkEmulation:
    """An emulated link between device and cloud (0 everywhere = loopback as it is)."""

    rtt_ms: float = 0.0
    jitter_ms: float = 0.0  # extra one-way delay, uniform in [0, jitter_ms]
    bandwidth_mbps: float = 0.0  # 0 = unlimited
    seed: int = 0

    def __post_init__(self):
        for name in ("rtt_ms", "jitter_ms", "bandwidth_mbps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--net-{name.replace('_', '-')[:-3]} must be >= 0")

    @property
    def active(self) -> bool:
        return bool(self.rtt_ms or self.jitter_ms or self.bandwidth_mbps)

    def label(self) -> dict:
        return {**asdict(self), "emulated": self.active}


class NetworkLink:
    """One direction of a link: ``delivery_s(sent_s, nbytes)`` gives when a message sent then arrives."""

    def __init__(self, emulation: NetworkEmulation, direction: int = 0):
        self.emulation = emulation
        self._rng = random.Random(emulation.seed * 2 + direction)
        self._link_free_s = self._last_s = float("-inf")

    def delivery_s(self, sent_s: float, nbytes: int) -> float:
        """Serialization at the bandwidth (messages queue behind each other), then half the RTT plus jitter;
        delivered in order, like one TCP stream."""
        e = self.emulation
        start = max(sent_s, self._link_free_s)
        self._link_free_s = start + (nbytes * 8 / (e.bandwidth_mbps * 1e6) if e.bandwidth_mbps else 0.0)
        arrival = self._link_free_s + e.rtt_ms / 2000 + self._rng.uniform(0, e.jitter_ms) / 1000
        self._last_s = max(self._last_s, arrival)
        return self._last_s
