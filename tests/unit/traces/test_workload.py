"""Reshaping a workload: arrival-rate scaling, first N, seeded sampling in arrival order, prompt-length filters."""

from __future__ import annotations

import pytest

from pdlink.traces import TraceRequest, Workload


def _workload(n: int = 10) -> Workload:
    return Workload("t", tuple(TraceRequest(arrival_s=2.0 * i, input_tokens=100 * i, output_tokens=i)
                               for i in range(n)))


def test_requests_must_be_in_arrival_order():
    with pytest.raises(ValueError, match="arrival order"):
        Workload("t", (TraceRequest(1.0, 1, 1), TraceRequest(0.5, 1, 1)))


def test_rate_and_duration():
    w = _workload()
    assert (w.duration_s, w.rate_rps) == (18.0, pytest.approx(0.5))
    assert Workload("t", ()).rate_rps is None and Workload("t", (TraceRequest(0, 1, 1),)).rate_rps is None


def test_scale_rate_compresses_and_expands_time():
    w = _workload()
    faster = w.scale_rate(4.0)
    assert [r.arrival_s for r in faster] == [0.5 * i for i in range(10)]
    assert faster.rate_rps == pytest.approx(4 * w.rate_rps)
    assert [r.arrival_s for r in w.scale_rate(0.5)] == [4.0 * i for i in range(10)]
    assert [(r.input_tokens, r.output_tokens) for r in faster] == [(r.input_tokens, r.output_tokens) for r in w]
    assert w.at_rate(3.0).rate_rps == pytest.approx(3.0)
    with pytest.raises(ValueError, match="> 0"):
        w.scale_rate(0)


def test_first_n_keeps_the_head_and_starts_at_zero():
    w = _workload().filter_input(min_tokens=300).first(3)
    assert [r.input_tokens for r in w] == [300, 400, 500]
    assert [r.arrival_s for r in w] == [0.0, 2.0, 4.0]
    assert len(_workload(2).first(5)) == 2


def test_sample_is_seeded_and_keeps_arrival_order():
    w = _workload(50)
    a, b, c = w.sample(10, seed=7), w.sample(10, seed=7), w.sample(10, seed=8)
    assert a == b and a != c
    tokens = [r.input_tokens for r in a]
    assert tokens == sorted(tokens) and len(set(tokens)) == 10
    assert a.requests[0].arrival_s == 0.0
    assert [r.arrival_s for r in a] == [2.0 * (t - tokens[0]) / 100 for t in tokens]
    with pytest.raises(ValueError, match="cannot sample 51 of 50"):
        w.sample(51)


def test_filter_by_prompt_length():
    w = _workload()
    assert [r.input_tokens for r in w.filter_input(min_tokens=700)] == [700, 800, 900]
    assert [r.input_tokens for r in w.filter_input(200, 400)] == [200, 300, 400]
    assert len(w.filter_input(min_tokens=10_000)) == 0
    with pytest.raises(ValueError, match="below min_tokens"):
        w.filter_input(500, 100)


def test_requests_are_validated():
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        TraceRequest(0.0, -1, 1)
    with pytest.raises(ValueError, match="arrival_s"):
        TraceRequest(-0.5, 1, 1)
