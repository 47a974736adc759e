"""``--pin-cores`` (pdlink.bench.core_pinning): the cloud and the devices on separate cores of this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pdlink.bench.core_pinning import plan_cores

CORES = sorted(os.sched_getaffinity(0))


def test_too_many_threads_for_this_machine_says_what_fits():
    with pytest.raises(ValueError, match=f"may use {len(CORES)}"):
        plan_cores(len(CORES), 1)


@pytest.mark.skipif(len(CORES) < 2, reason="pinning the cloud and a device apart needs 2 cores")
def test_the_cloud_gets_the_first_cores_and_the_devices_the_next():
    plan = plan_cores(1, 1)
    assert plan.cloud == (CORES[0],) and plan.devices == (CORES[1],)
    assert plan.to_json() == {"cloud_cores": [CORES[0]], "device_cores": [CORES[1]]}


def test_pinning_moves_threads_already_running_and_later_ones():
    code = f"""
import os, threading
from pdlink.bench.core_pinning import pin_this_process
started, done = threading.Event(), threading.Event()
def wait():
    started.set()
    done.wait(10)
t = threading.Thread(target=wait)
t.start(); started.wait(10)
pin_this_process(({CORES[-1]},))
later = []
u = threading.Thread(target=lambda: later.append(os.sched_getaffinity(0)))
u.start(); u.join()
print(sorted(os.sched_getaffinity(t.native_id)), sorted(later[0]))
done.set(); t.join()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"[{CORES[-1]}]"] * 2
