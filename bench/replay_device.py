"""One emulated device of a trace replay: its own engine (the real one, slowed to the profile) and session,
sending its share of the trace's requests one at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pdlink.bench.replay_request import ReplayRequest
from pdlink.traces.report import TraceBenchConfig

NET_JITTER_MS = 5.0
# With --pin-cores an emulated device has one core for its engine and its event loop (a phone has eight): the
# engine thread runs at this nice increment so the loop gets the core when a paced token is due (without it the
# OS time-slices them and shown gaps overshoot the pace by ~5 ms).
PINNED_ENGINE_NICE = 5


def replay_cloud_estimate(cfg: TraceBenchConfig):
    """What a replay's device assumes of the cloud before its first request: only the RTT is known
    (``CloudEstimate``'s other fields keep their defaults); the server's own TTFT estimate refines it."""
    from pdlink.edge.session_settings import CloudEstimate

    return CloudEstimate(rtt_s=cfg.net_rtt_ms / 1000)


@dataclass(frozen=True)
class ReplayOutcome:
    """What one request got on one device: its session record and when it started (seconds after the
    replay's start; ``start_s - request.arrival_s`` is the wait for the device to become free)."""

    request: ReplayRequest
    device: int
    start_s: float
    result: object  # pdlink.edge.session_result.SessionResult


class ReplayDevice:
    """A device: ``Engine`` + ``Session`` over the package, emulating ``profile``; ``run`` sends requests."""

    def __init__(self, index: int, package: str, cfg: TraceBenchConfig, profile, context_window: int,
                 cloud=None):
        """``cloud``: a ``CloudTarget`` (None: device mode only). Loads the engine (seconds)."""
        from pdlink.edge.emulation import NetworkEmulation
        from pdlink.edge.engine import Engine, EngineConfig
        from pdlink.edge.session import Session, SessionConfig

        self.index = index
        engine = Engine(EngineConfig(package=package, num_threads=cfg.device_threads, context_window=context_window,
                                     max_num_sequences=1))
        network = NetworkEmulation(rtt_ms=cfg.net_rtt_ms, jitter_ms=NET_JITTER_MS if cfg.net_rtt_ms else 0.0,
                                   seed=cfg.seed * 1000 + index)
        self.session = Session(SessionConfig(
            package=package, cloud=cloud, device_profile=profile, network=network, threads=cfg.device_threads,
            context_window=context_window, max_gap_s=cfg.max_gap_ms / 1000,
            cloud_estimate=replay_cloud_estimate(cfg), ttft_slo_s=cfg.ttft_slo_s,
            settings_version=cfg.settings_version, engine_nice=PINNED_ENGINE_NICE if cfg.pin_cores else 0),
            engine=engine)

    def warm_up(self) -> None:
        """One tiny device-mode request: the engine's first calls are slow, not the device."""
        self.session.complete(list(range(100, 116)), mode="device", max_tokens=2, ignore_eos=True)

    def run(self, requests: list[ReplayRequest], mode: str, t0: float) -> list[ReplayOutcome]:
        """Send ``requests`` in order, each at max(its arrival, this device free); ``t0``: the replay's start
        (``time.perf_counter``). Greedy, ``ignore_eos``: every answer has its request's length."""
        out = []
        for req in requests:
            wait = t0 + req.arrival_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            start = time.perf_counter() - t0
            result = self.session.complete(list(req.prompt_ids), mode=mode, max_tokens=req.max_tokens,
                                           ignore_eos=True)
            out.append(ReplayOutcome(req, self.index, start, result))
        return out

    def close(self) -> None:
        self.session.close()
