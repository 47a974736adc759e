"""One request on one emulated device: the real ``SessionCore`` driven on simulated time.

The core takes every decision exactly as in ``pdlink.edge.session_run`` (pd, device and cloud mode alike);
this shell only turns them into simulated time: a local step lasts what the device profile says, a message
to or from the cloud takes one network one-way delay, the cloud is a :class:`CloudModel`. Token ids are
stand-ins (the answer's length, not its text, is simulated); the answer ends at ``max_tokens``.
Shown times come from the speed controller's schedule, so they are released once, at the end.
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from pdlink.traces.report import RequestRecord
from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.fallback import Fallback
from pdlink.edge.session_core import SessionCore, SessionState
from pdlink.edge.session_settings import CloudEstimate, CloudPlan, SessionSettings
from pdlink.sim.cloud_model import CloudModel, CloudRequest
from pdlink.sim.network import Network

TOKEN = 0  # the stand-in id of every prompt and answer token (never a stop token)


class DeviceSession:
    """The device side of one request (see the module docstring)."""

    def __init__(self, env: simpy.Environment, key, *, prompt_tokens: int, max_tokens: int, mode: str,
                 settings: SessionSettings, device: DeviceProfile, cloud: CloudModel, network: Network,
                 max_gap_s: float, cloud_estimate: CloudEstimate | None = None):
        self.env, self.key, self.mode, self.settings = env, key, mode, settings
        self.device, self.cloud, self.network = device, cloud, network
        pd = mode == "pd"
        plan = CloudPlan(settings, device, prompt_tokens, max_tokens, max_gap_s, downlink_s=network.one_way_s,
                         cloud=cloud_estimate) if pd and settings.use_cloud else None
        gap_bound = max(max_gap_s, settings.gap_bound_s or 0.0)  # v2: the pace may be the device's TPOT (session_run)
        self.core = SessionCore([TOKEN] * prompt_tokens, max_tokens=max_tokens, stop_token_ids=set(),
                                chunk_size=settings.chunk_size, pace_s=settings.pace_s,
                                max_gap_s=gap_bound if pd else None, use_cloud=settings.use_cloud,
                                device_compute=mode != "cloud", cloud_limit=settings.k, plan=plan,
                                fallback=settings.reason if pd and not settings.use_cloud else None)
        self.cloud_request: CloudRequest | None = None
        self.t0 = 0.0
        self.device_compute_s = 0.0
        self.end_s = 0.0
        self._computing = False
        self._wake: simpy.Event | None = None

    def _now(self) -> float:
        return self.env.now - self.t0

    def run(self):
        """The simpy process: from the device starting the request to the answer being complete."""
        self.t0 = self.env.now
        core = self.core
        if self.settings.use_cloud:
            self.cloud_request = CloudRequest(self.key, len(core.prompt), self.settings.k)
            self.network.deliver(self.env, self.cloud.submit, self.cloud_request, self)
        while not core.finished:
            self._send()
            core.release_due(self._now() + 1e-9)  # shown as they fall due (simulated time rounds), at that pace
            if core.finished:
                break
            if not self._computing and (step := core.next_compute(self._now())) is not None:
                c = core.num_computed_tokens
                cost = (self.device.decode_time_s(c) if step.decode
                        else self.device.prefill_time_s(len(step.token_ids), c))
                self.device_compute_s += cost
                self._computing = True
                self.env.timeout(cost, value=len(step.token_ids)).callbacks.append(self._computed)
            due = core.next_release_s()
            if not self._computing and due is None and core.cloud.name not in ("WAITING", "STREAMING"):
                raise RuntimeError(f"request {self.key}: stalled in {core.state.name} with the cloud {core.cloud.name}")
            self._wake = self.env.event()
            if due is not None:
                self.env.timeout(max(0.0, due - self._now())).callbacks.append(lambda _: self._poke())
            yield self._wake
        self._send()
        self.end_s = self._now()

    # ------------------------------------------------------------------ events (CloudClient + local steps)

    def _computed(self, event) -> None:
        self._computing = False
        self.core.on_computed(event.value, TOKEN, self._now())
        self._poke()

    def on_accepted(self, estimated_ttft_s: float) -> None:
        self.network.deliver(self.env, self._arrive, self.core.on_cloud_accepted, estimated_ttft_s)

    def on_rejected(self, reason: str) -> None:
        self.network.deliver(self.env, self._arrive, self.core.on_cloud_failed, Fallback.REJECTED.because(reason))

    def on_token(self, index: int) -> None:
        self.network.deliver(self.env, self._arrive, self.core.on_cloud_token, index, TOKEN)

    def on_done(self, reason: str, busy_s: float) -> None:
        self.network.deliver(self.env, self._arrive, self.core.on_cloud_ended, reason)

    def _arrive(self, handler, *args) -> None:
        if handler in (self.core.on_cloud_token, self.core.on_cloud_accepted):
            handler(*args, self._now())
        else:
            handler(*args)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _send(self) -> None:
        for msg in self.core.messages_to_send():
            self.network.deliver(self.env, self.cloud.stop, self.key, msg.after_index)

    # ------------------------------------------------------------------ the record

    def record(self, index: int, arrival_s: float) -> RequestRecord:
        """The request's record: times from the device starting it, as a replay's session measures them; the
        wait for a busy device after ``arrival_s`` is ``device_wait_s``."""
        waited = self.t0 - arrival_s
        self.core.release_due(math.inf)
        shown = self.core.shown
        times = np.array([s.shown_s for s in shown])
        gaps = np.diff(times) if times.size > 1 else np.zeros(1)
        end = max(times[-1] if times.size else 0.0, self.end_s)
        origins = self.core.origins
        return RequestRecord(
            index=index, arrival_s=arrival_s, prompt_tokens=self.core.prompt_tokens, output_tokens=len(shown),
            ttft_s=float(times[0]) if times.size else None, max_gap_s=float(gaps.max()),
            p99_gap_s=float(np.percentile(gaps, 99)), e2e_s=float(end), device_wait_s=float(waited),
            cloud_busy_s=self.cloud_request.busy_s if self.cloud_request is not None else 0.0,
            handover_index=self.core.handover_index, fallback=self.core.fallback,
            device_tokens=origins.count("device"), cloud_tokens=origins.count("cloud"))
