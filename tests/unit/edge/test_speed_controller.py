import numpy as np
import pytest

from pdlink.edge.speed_controller import SpeedController


def _run(controller, arrivals, step=0.001):
    """Drive the controller with a ticking clock; return shown times."""
    for i, a in enumerate(arrivals):
        controller.push(i, a)
    shown, now = [], 0.0
    while controller.buffered:
        shown += controller.release_due(now)
        now += step
    return [s.shown_s for s in shown], [s.item for s in shown]


def test_first_token_is_shown_at_once_and_bursts_become_steady():
    arrivals = [0.5] + [1.0] * 10 + [2.0] * 10  # two bursts after the first token
    shown, order = _run(SpeedController(tau_s=0.04), arrivals)
    assert order == list(range(21))
    assert shown[0] == pytest.approx(0.5, abs=1e-3)
    gaps = np.diff(shown)
    burst = gaps[1:]
    assert np.allclose(burst[burst < 0.4], 0.04, atol=1e-3)


def test_never_shown_before_arrival_and_gap_bounded_while_buffered():
    rng = np.random.default_rng(0)
    arrivals = np.sort(rng.uniform(0, 2, size=200))
    controller = SpeedController(tau_s=0.2, max_gap_s=0.03)
    assert controller.tau_s == 0.03
    shown, _ = _run(controller, list(arrivals))
    assert all(s >= a - 1e-9 for s, a in zip(shown, arrivals))
    for i in range(1, len(shown)):
        if arrivals[i] <= shown[i - 1]:  # it was buffered when the previous one was shown
            assert shown[i] - shown[i - 1] <= 0.03 + 1e-9


def test_pace_can_change_and_bad_values_are_refused():
    c = SpeedController(tau_s=0.1)
    c.push("a", 0.0)
    c.push("b", 0.0)
    assert [s.item for s in c.release_due(0.0)] == ["a"]
    c.set_pace(0.01)
    assert c.next_release_s() == pytest.approx(0.01)
    assert [s.item for s in c.release_due(float("inf"))] == ["b"]
    with pytest.raises(ValueError):
        c.set_pace(-1)
    with pytest.raises(ValueError):
        SpeedController(0.1, max_gap_s=0)
