"""Cloud and devices on separate cores during a replay on one machine (``--pin-cores``).

On a small machine the emulated devices' real engines otherwise compute on the cores the cloud server uses,
so pd mode (device and cloud at once) measures a slower cloud than cloud mode does; a datacenter cloud shares
no cores with its devices. Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CorePlan:
    """Which cores the cloud server gets and which the devices (this process) get."""

    cloud: tuple[int, ...]
    devices: tuple[int, ...]

    def to_json(self) -> dict:
        return {"cloud_cores": list(self.cloud), "device_cores": list(self.devices)}


def plan_cores(cloud_threads: int, device_threads: int) -> CorePlan:
    """The first ``cloud_threads`` of this process's cores for the cloud, the next ``device_threads`` for the
    devices. Raises ValueError, saying what fits, when the machine has too few."""
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--pin-cores needs Linux (os.sched_setaffinity); run without it")
    cores = sorted(os.sched_getaffinity(0))
    cloud_threads = max(1, cloud_threads)
    device_threads = max(1, device_threads)
    if cloud_threads + device_threads > len(cores):
        raise ValueError(f"--pin-cores needs {cloud_threads} cloud + {device_threads} device core(s), this process "
                         f"may use {len(cores)} ({cores}); lower --cloud-threads / --device-threads or run without "
                         "--pin-cores")
    return CorePlan(tuple(cores[:cloud_threads]), tuple(cores[cloud_threads:cloud_threads + device_threads]))


def pin_this_process(cores: tuple[int, ...]) -> None:
    """Every thread of this process (and every thread it starts later) on ``cores``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass
    os.sched_setaffinity(0, cores)
