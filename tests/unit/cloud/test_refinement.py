"""Choosing the kept prompt positions from attention scores, and the scheduler's refined-prompt output."""

from __future__ import annotations

import numpy as np
import pytest

from pdlink.cloud.refinement import RefineSpec, kept_fraction_of, select_kept_indices
from pdlink.cloud.outputs import FinishedOutput, RefinedOutput, TokenOutput
from pdlink.cloud.request import Request
from pdlink.cloud.scheduler import Scheduler, SchedulerConfig

from .fake_backend import FakeBackend, FakeClock


def test_head_and_window_always_kept_and_ratio_met():
    scores = np.zeros(400)
    kept = select_kept_indices(scores, RefineSpec(keep_ratio=0.25, window=16, head=8))
    assert kept == sorted(set(kept))
    assert set(range(8)) <= set(kept) and set(range(384, 400)) <= set(kept)
    assert len(kept) == 100


def test_high_scores_win_and_come_as_runs():
    scores = np.full(300, 0.01)
    scores[150:160] = 5.0  # a block the last window attends to
    scores[40] = 6.0  # a lone spike
    kept = select_kept_indices(scores, RefineSpec(keep_ratio=0.2, window=8, head=4))
    assert kept_fraction_of(kept, range(150, 160)) == 1.0
    assert 40 in kept


def test_forced_positions_may_exceed_the_ratio():
    kept = select_kept_indices(np.ones(20), RefineSpec(keep_ratio=0.1, window=8, head=8))
    assert kept == list(range(20))[:8] + list(range(12, 20))


@pytest.mark.parametrize("bad", [np.zeros(0), np.array([1.0, np.nan]), np.zeros((2, 2))])
def test_bad_scores_are_refused(bad):
    with pytest.raises(ValueError):
        select_kept_indices(bad, RefineSpec(0.5))


@pytest.mark.parametrize("kwargs", [{"keep_ratio": 0.0}, {"keep_ratio": 1.5}, {"keep_ratio": 0.5, "window": 0}])
def test_bad_spec_is_refused(kwargs):
    with pytest.raises(ValueError):
        RefineSpec(**kwargs)


class ScoringBackend(FakeBackend):
    """The fake backend plus prompt scoring: position i scores i (so the tail wins)."""

    supports_refinement = True

    def __init__(self, clock):
        super().__init__(clock)
        self.tracked: dict[int, int] = {}

    def track_attention(self, seq_id, window):
        assert not self.seqs[seq_id], "tracked after prefill began"
        self.tracked[seq_id] = window

    def prompt_importance(self, seq_id):
        assert seq_id in self.tracked
        return np.arange(len(self.seqs[seq_id]), dtype=float)


def run(backend, request) -> list:
    sched = Scheduler(backend, SchedulerConfig(prefill_chunk_tokens=64, step_token_budget=64), clock=backend.clock)
    sched.add(request)
    outputs = []
    for _ in range(100):
        if not sched.has_work:
            break
        outputs += sched.step()
    return outputs


def test_scheduler_sends_kept_indices_before_the_first_token():
    backend = ScoringBackend(FakeClock())
    outputs = run(backend, Request("r", list(range(1, 201)), 3, refine=RefineSpec(0.5, window=16, head=4)))
    refined = [o for o in outputs if isinstance(o, RefinedOutput)]
    assert len(refined) == 1 and refined[0].keep_ratio == 0.5
    assert len(refined[0].kept_indices) == 100 and refined[0].kept_indices[-1] == 199
    assert outputs.index(refined[0]) < next(i for i, o in enumerate(outputs) if isinstance(o, TokenOutput))


def test_k1_request_gets_its_refined_prompt_before_done():
    backend = ScoringBackend(FakeClock())
    outputs = run(backend, Request("r", list(range(1, 50)), 1, refine=RefineSpec(0.5, window=8, head=4)))
    kinds = [type(o) for o in outputs]
    assert kinds == [RefinedOutput, TokenOutput, FinishedOutput]


def test_backend_without_scoring_ignores_refine():
    backend = FakeBackend(FakeClock())
    outputs = run(backend, Request("r", list(range(1, 100)), 2, refine=RefineSpec(0.5)))
    assert not any(isinstance(o, RefinedOutput) for o in outputs)
    assert sum(isinstance(o, TokenOutput) for o in outputs) == 2
