"""Emulation for tests and benchmarks on one machine: a slower device and a slower network.

Both wrap the production path from outside; the session uses them only when asked.

``EmulatedDevice`` wraps the engine: every step runs on the real engine, then the difference to the time
the profile's device would need is waited out, so a timeline shows that device honestly (the work is
real, only the speed is the profile's). Steps the host is slower than the profile at are counted.

``EmulatedCloudLink`` is a ``CloudLink`` whose messages travel the way a link with the given RTT, jitter
and bandwidth would carry them, in order (one TCP stream; ``NetworkLink`` per direction). Both are
labeled in every output that used them.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from pdlink.edge.cloud_link import CloudLink, CloudTarget
from pdlink.edge.device_engine import DeviceEngine
from pdlink.edge.device_profile import DeviceProfile

_TOKEN_FRAME_BYTES = 110  # a token frame on the wire, about (JSON text + websocket header)


class EmulatedDevice:
    """A ``StepDevice`` (``pdlink.edge.device_engine``) whose steps take the profile's time on the real engine."""

    def __init__(self, engine: DeviceEngine, profile: DeviceProfile):
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
        target = self.profile.prefill_time_s(len(token_ids), context)
        return self._timed(lambda: self.engine.prefill(seq_id, token_ids), target)

    def decode(self, seq_id: int, token_id: int) -> np.ndarray:
        return self._timed_decode(seq_id, lambda: self.engine.decode(seq_id, token_id))

    def decode_greedy(self, seq_id: int, token_id: int) -> int:
        return self._timed_decode(seq_id, lambda: self.engine.decode_greedy(seq_id, token_id))

    def _timed_decode(self, seq_id: int, step):
        return self._timed(step, self.profile.decode_time_s(self.engine.num_computed_tokens(seq_id)))

    def _timed(self, step, target_s: float):
        t0 = time.perf_counter()
        logits = step()
        spent = time.perf_counter() - t0
        self.steps += 1
        self.compute_s += spent
        if spent > target_s:
            self.host_slower_steps += 1
        else:
            t1 = time.perf_counter()
            self._interrupt.wait(target_s - spent)
            self.waited_s += time.perf_counter() - t1
        return logits

    def label(self) -> dict:
        """What was emulated, for the output."""
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


class EmulatedCloudLink(CloudLink):
    """A ``CloudLink`` over an emulated network: the connection costs a round trip more, the request and
    the stops wait for the uplink, and every event reaches ``inbox`` when the downlink would deliver it."""

    def __init__(self, target: CloudTarget, tokenizer_hash: str, network: NetworkEmulation):
        super().__init__(target, tokenizer_hash)
        self.network = network
        self._down, self._up = NetworkLink(network, 0), NetworkLink(network, 1)
        self._in_transit: asyncio.Queue = asyncio.Queue()
        self._courier: asyncio.Task | None = None

    def start(self, **request) -> None:
        self._courier = asyncio.create_task(self._carry())
        super().start(**request)

    async def close(self) -> None:
        await super().close()
        if self._courier is not None:
            self._courier.cancel()
            await asyncio.gather(self._courier, return_exceptions=True)

    def _deliver(self, event) -> None:
        now = time.perf_counter()
        self._in_transit.put_nowait((self._down.delivery_s(now, _TOKEN_FRAME_BYTES), event))

    async def _connecting(self) -> None:
        await asyncio.sleep(self.network.rtt_ms / 1000)  # TCP and websocket upgrade: one more round trip

    async def _uplink(self, nbytes: int) -> None:
        now = time.perf_counter()
        delay = self._up.delivery_s(now, nbytes) - now
        if delay > 0:
            await asyncio.sleep(delay)

    async def _carry(self) -> None:
        while True:
            at, event = await self._in_transit.get()
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            CloudLink._deliver(self, event)


def cloud_link_factory(network: NetworkEmulation):
    """How a session opens its cloud links: over the emulated network when one is set, else as they are."""
    if network.active:
        return lambda target, tokenizer_hash: EmulatedCloudLink(target, tokenizer_hash, network)
    return CloudLink
