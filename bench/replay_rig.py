"""The set-up of a trace replay on this machine: the package, the trace's requests, one real cloud server on
loopback and the emulated devices. ``replay`` sends the requests once in one mode; the single run
(``bench/trace_replay.py``) and the device-count sweep (``bench/device_sweep.py``) both use it."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pdlink.bench.core_pinning import pin_this_process, plan_cores
from pdlink.bench.replay_device import NET_JITTER_MS, PINNED_ENGINE_NICE, ReplayDevice, ReplayOutcome
from pdlink.bench.replay_request import ReplayRequest, replay_requests, trace_workload
from pdlink.traces.report import TraceBenchConfig
from pdlink.edge.device_profile import resolve_profile

BENCH_PACKAGES = Path(".cache/bench-packages")
CLOUD_PREFILL_CHUNK = 1024  # as bench/session.py: prefill in large chunks, the cloud is not latency-bound here
REPLAY_TTFT_BUDGET_S = 600.0  # the replay's server admits every request (its devices wait instead)


def replay_server_limits(max_devices: int) -> dict:
    """The serving limits the replay's cloud server runs with, under ``CloudProfile``'s field names (the
    simulator's model of this server uses them too): large prefill chunks, no TTFT budget to speak of, a KV
    sequence per device and one more (a stopped request not freed yet)."""
    return {"prefill_chunk_tokens": CLOUD_PREFILL_CHUNK, "step_token_budget": 2 * CLOUD_PREFILL_CHUNK,
            "ttft_budget_s": REPLAY_TTFT_BUDGET_S, "max_sequences": max_devices + 1}


@dataclass(frozen=True)
class ReplayRun:
    """One pass over the requests: outcomes in request order, the wall time and the cloud server's own busy
    seconds during the pass (None without a server)."""

    mode: str
    devices: int
    outcomes: list[ReplayOutcome]
    wall_s: float
    cloud_busy_s: float | None


class ReplayRig:
    """A context manager holding the package, the requests, the cloud server (``with_cloud``) and up to
    ``max_devices`` emulated devices (created on first use, each warmed up once).

    Raises, before anything is built or started: FileNotFoundError (trace or trace folder missing),
    TraceFormatError, ValueError (an unknown device profile, no request left after the filter, too few cores
    for ``pin_cores``). With ``pin_cores`` the server runs on its own cores and this process (the devices) on
    the next ones until the rig is closed."""

    def __init__(self, cfg: TraceBenchConfig, with_cloud: bool, max_devices: int | None = None):
        self.cfg = cfg
        self.workload = trace_workload(cfg)
        self.profile = resolve_profile(cfg.device_profile)
        self.with_cloud, self.max_devices = with_cloud, max_devices or cfg.devices
        self.cores = plan_cores(cfg.cloud_threads, cfg.device_threads * self.max_devices) if cfg.pin_cores else None
        self._affinity_before: set[int] | None = None
        lengths = [min(r.input_tokens, cfg.max_prompt_tokens) for r in self.workload]
        self.longest_prompt = max(lengths)
        self.max_tokens = max(1, min(max(r.output_tokens for r in self.workload), cfg.max_output_tokens))
        self.context_window = self.longest_prompt + self.max_tokens + 16
        self.package: str | None = None
        self.requests: list[ReplayRequest] = []
        self.devices: list[ReplayDevice] = []
        self.server = None
        self.cloud = None
        self.health: dict | None = None

    def __enter__(self) -> "ReplayRig":
        from pdlink.bench.engine import _ensure_package

        if self.cores is not None:
            self._affinity_before = os.sched_getaffinity(0)
            pin_this_process(self.cores.devices)
        try:
            self.package = str(self.cfg.package) if self.cfg.package else str(_ensure_package("q4_1", BENCH_PACKAGES))
            if self.with_cloud:
                self._start_cloud()
            self.requests = replay_requests(self.cfg, self.device(0).session.tokenizer, self.workload)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for d in self.devices:
            d.close()
        self.devices.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._affinity_before is not None:
            pin_this_process(tuple(self._affinity_before))
            self._affinity_before = None

    def _start_cloud(self) -> None:
        from pdlink.cloud.server_process import ServerProcess
        from pdlink.edge.cloud_link import CloudTarget

        out = Path(self.cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        # Every device holds at most one request; one more sequence covers a stopped one not yet freed.
        # NOTE: the server warms up with a prompt of one prefill chunk and 4 leading tokens, which must fit
        # its context (max prompt + max leading tokens), so the prompt limit is at least a chunk.
        limits = replay_server_limits(self.max_devices)
        self.server = ServerProcess(
            "--model", self.package, "--threads", str(self.cfg.cloud_threads),
            "--max-prompt-tokens", str(max(self.longest_prompt, CLOUD_PREFILL_CHUNK + 4)),
            "--max-leading-tokens", str(self.max_tokens), "--max-batch-sequences", str(limits["max_sequences"]),
            "--prefill-chunk-tokens", str(limits["prefill_chunk_tokens"]),
            "--step-token-budget", str(limits["step_token_budget"]), "--ttft-budget-s", f"{limits['ttft_budget_s']:g}",
            log_path=out / f"trace-server-{self.cfg.mode}.log", cores=self.cores.cloud if self.cores else None)
        self.cloud = CloudTarget(self.server.wait_ready(timeout_s=300), event_timeout_s=600)
        self.health = self.server.health()

    def device(self, i: int) -> ReplayDevice:
        """The ``i``-th device (loaded and warmed up on first use)."""
        while len(self.devices) <= i:
            d = ReplayDevice(len(self.devices), self.package, self.cfg, self.profile, self.context_window,
                             cloud=self.cloud)
            d.warm_up()
            self.devices.append(d)
        return self.devices[i]

    def cloud_busy_s(self) -> float | None:
        """The server's busy seconds so far (prefill + decode steps; its warm-up not counted)."""
        return float(self.server.health()["busy_s"]) if self.server is not None else None

    def replay(self, mode: str, devices: int | None = None,
               requests: list[ReplayRequest] | None = None) -> ReplayRun:
        """Send ``requests`` (default: the trace's) from ``devices`` devices, round-robin, each device one
        request at a time, all devices at once (a thread each). Raises ValueError for a mode that needs
        the cloud in a rig without one."""
        n = devices or self.cfg.devices
        requests = self.requests if requests is None else requests
        if mode != "device" and self.cloud is None:
            raise ValueError(f"mode {mode!r} needs the cloud server (the rig was built without one)")
        for i in range(n):
            self.device(i)
        shares = [requests[i::n] for i in range(n)]
        busy0 = self.cloud_busy_s()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pdlink-replay-device") as pool:
            parts = list(pool.map(lambda i: self.devices[i].run(shares[i], mode, t0), range(n)))
        wall = time.perf_counter() - t0
        busy1 = self.cloud_busy_s()
        outcomes = sorted((o for part in parts for o in part), key=lambda o: o.request.index)
        return ReplayRun(mode, n, outcomes, wall, None if busy0 is None else busy1 - busy0)

    def emulation_label(self) -> dict:
        """What was emulated, for the report."""
        sharing = "run on separate cores" if self.cores else "share this machine's cores"
        return {"device_profile": self.profile.to_json(), "device_emulated": True,
                "network": {"rtt_ms": self.cfg.net_rtt_ms, "jitter_ms": NET_JITTER_MS if self.cfg.net_rtt_ms else 0.0},
                "threads": {"device_engine": self.cfg.device_threads, "cloud_server": self.cfg.cloud_threads},
                "cores": {**self.cores.to_json(), "device_engine_nice": PINNED_ENGINE_NICE} if self.cores else "shared",
                "note": "emulated devices: the real engine computes every step, then waits out the difference to "
                        "the profile's time; the network is emulated on loopback; devices and cloud "
                        f"{sharing} "
                        "(steps where the host was slower than the profile are counted per request "
                        "in host_slower_steps)"}
