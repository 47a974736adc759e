"""The model worker thread (pdlink.cloud.worker) over a fake backend: outputs arrive, and ``min_step_s``
holds every step to at least that long and counts the wait as the request's compute."""

from __future__ import annotations

import queue

import pytest

from pdlink.cloud.config import CloudConfig
from pdlink.cloud.outputs import FinishedOutput, TokenOutput
from pdlink.cloud.request import Request
from pdlink.cloud.scheduler import Scheduler, SchedulerConfig
from pdlink.cloud.slowed_backend import SlowedBackend
from pdlink.cloud.worker import ModelWorker

from .fake_backend import FakeBackend, FakeClock, continuation

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]


def serve_one(min_step_s: float, k: int = 5) -> tuple[list[int], FinishedOutput]:
    """One request through a started worker; returns its tokens and its finish (bounded waits)."""
    clock = FakeClock()  # the fake backend charges 1 ms per prompt token and 20 ms per decode step on it
    outputs: queue.Queue = queue.Queue()
    backend = FakeBackend(clock)
    if min_step_s:  # a slower cloud: every model call held to min_step_s (on the fake clock)
        backend = SlowedBackend(backend, min_step_s, clock=clock, sleep=lambda s: setattr(clock, "now", clock.now + s))
    worker = ModelWorker(Scheduler(backend, SchedulerConfig(), clock=clock), lambda outs: [outputs.put(o) for o in outs])
    worker.start()
    try:
        assert worker.admit(Request("r", PROMPT, k)).accepted
        tokens = []
        while True:
            out = outputs.get(timeout=10)
            if isinstance(out, TokenOutput):
                tokens.append(out.token_id)
            elif isinstance(out, FinishedOutput):
                return tokens, out
    finally:
        worker.close()


def test_the_worker_streams_the_greedy_tokens_and_counts_compute():
    tokens, fin = serve_one(min_step_s=0.0)
    assert tokens == continuation(PROMPT, 5)
    assert fin.busy_s == pytest.approx(len(PROMPT) * 0.001 + 4 * 0.02)  # one prefill step, four decode steps


def test_a_slowed_backend_holds_each_call_and_the_wait_counts_as_busy():
    tokens, fin = serve_one(min_step_s=0.05)
    assert tokens == continuation(PROMPT, 5)  # the same answer, only slower
    assert fin.busy_s == pytest.approx(5 * 0.05)


@pytest.mark.parametrize("bad", [-0.1, 6.0])
def test_min_step_s_out_of_range_says_how_to_fix_it(bad):
    with pytest.raises(ValueError, match="min_step_s must be in 0..5"):
        CloudConfig(model="fake", model_id="fake", min_step_s=bad)
