"""A whole run: N emulated devices send a trace's requests to one simulated cloud over a simulated link.

Requests go to the devices round-robin in arrival order; a device handles one request at a time, so a
request whose device is busy waits (its TTFT counts the wait). Everything is deterministic: the same
requests, devices, profiles, policy and RTT give the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import simpy

from pdlink.traces.report import MODES, RequestRecord
from pdlink.edge.device_profile import DeviceProfile, resolve_profile
from pdlink.edge.session_settings import CloudEstimate
from pdlink.sim.batching_cloud import BatchingCloud
from pdlink.sim.cloud_model import CloudModel
from pdlink.sim.cloud_profile import CloudProfile
from pdlink.sim.device_session import DeviceSession
from pdlink.sim.network import Network
from pdlink.sim.policy import SettingsPolicy, default_policy, mode_settings

CloudFactory = Callable[[simpy.Environment], CloudModel]


@dataclass(frozen=True)
class SimRequest:
    """One request to simulate: when it arrives and how long its prompt and answer are (already capped)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int

    def __post_init__(self):
        if self.arrival_s < 0 or self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError(f"a request needs arrival_s >= 0 and at least one prompt and one answer token: {self}")


def default_estimate(cloud: CloudProfile | CloudFactory, network: Network) -> CloudEstimate:
    """What a device assumes of an idle cloud: the RTT, the profile's prefill speed and its decode step of one
    sequence at a 2k context (a factory: ``CloudEstimate``'s defaults)."""
    if not isinstance(cloud, CloudProfile):
        return CloudEstimate(rtt_s=network.rtt_s)
    return CloudEstimate(rtt_s=network.rtt_s, prefill_tok_s=cloud.prefill_tok_s,
                         tpot_s=cloud.step_overhead_s + cloud.decode_step_s(1, 2048))


class Simulation:
    """One simulated run (see the module docstring); ``run()`` returns a record per request, in order."""

    def __init__(self, requests: Iterable[SimRequest], *, mode: str, device: str | DeviceProfile,
                 cloud: CloudProfile | CloudFactory, devices: int = 1, network: Network = Network(),
                 max_gap_s: float = 0.05, chunk_size: int = 512, policy: SettingsPolicy | None = None,
                 cloud_estimate: CloudEstimate | None = None, ttft_slo_s: float | None = None,
                 settings_version: int = 2):
        """``cloud``: a profile (served by :class:`BatchingCloud`) or a factory ``env -> CloudModel``.
        ``cloud_estimate``: what the device assumes of the cloud when it decides its settings (default: the
        RTT, the profile's prefill speed and its one-sequence decode step, no queue). ``policy``: the pd
        settings (default: ``default_policy`` of ``settings_version`` with ``ttft_slo_s``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.mode, self.devices, self.network = mode, devices, network
        self.device = resolve_profile(device)
        self.max_gap_s, self.chunk_size = max_gap_s, chunk_size
        self.ttft_slo_s, self.settings_version = ttft_slo_s, settings_version
        self.policy = policy or default_policy(max_gap_s, chunk_size, ttft_slo_s=ttft_slo_s, version=settings_version)
        self.cloud_estimate = cloud_estimate or default_estimate(cloud, network)
        if isinstance(cloud, CloudProfile):
            profile = cloud
            self.cloud_factory: CloudFactory = lambda env: BatchingCloud(env, profile)
        else:
            self.cloud_factory = cloud
        self.cloud: CloudModel | None = None
        self.sessions: list[DeviceSession | None] = []

    def run(self) -> list[RequestRecord]:
        env = simpy.Environment()
        self.cloud = self.cloud_factory(env)
        self.sessions = [None] * len(self.requests)
        for d in range(self.devices):
            env.process(self._device(env, list(range(d, len(self.requests), self.devices))))
        env.run()
        return [s.record(i, self.requests[i].arrival_s) for i, s in enumerate(self.sessions)]

    def _device(self, env: simpy.Environment, indices: list[int]):
        """One device: its requests in arrival order, one at a time."""
        for i in indices:
            req = self.requests[i]
            if env.now < req.arrival_s:
                yield env.timeout(req.arrival_s - env.now)
            settings = mode_settings(self.mode, req.prompt_tokens, req.output_tokens, self.device,
                                     self.cloud_estimate, self.policy, self.chunk_size)
            session = DeviceSession(env, i, prompt_tokens=req.prompt_tokens, max_tokens=req.output_tokens,
                                    mode=self.mode, settings=settings, device=self.device, cloud=self.cloud,
                                    network=self.network, max_gap_s=self.max_gap_s, cloud_estimate=self.cloud_estimate)
            self.sessions[i] = session
            yield env.process(session.run())
