"""The real-timeline pacer (pdlink.edge.pace_planner) and what a timeline says about a missed gap bound."""

from __future__ import annotations

import pytest

from pdlink.edge.gap_report import gap_miss
from pdlink.edge.pace_planner import STRETCH, PacePlanner
from pdlink.edge.session_core import SessionCore
from pdlink.edge.timeline import Timeline


def planner(**kw) -> PacePlanner:
    return PacePlanner(**{"bound_s": 0.045, "device_tpot_s": 0.025, "token_s": 1 / 120, "cloud_tpot_s": 0.02, **kw})


def test_a_cloud_slower_than_the_bound_is_held_until_the_stream_fits():
    p = planner()
    for i in range(4):
        p.on_arrival(3.0 + 0.09 * i)  # 90 ms apart: twice the bound
    assert p.cloud_interval_s() == pytest.approx(0.09)
    forecast = p.handover(3.27, prompt_tokens=1500, computed=512, received=4, in_flight=512, in_flight_since_s=0.0,
                          cloud_limit=256, streaming=True, chunk=512, max_tokens=256)
    t_h, j = forecast
    assert 12.0 < t_h < 14.5 and 100 < j < 130
    hold = p.hold_s(3.27, 3.0, forecast, latest_first_show_s=12.0, cloud_tokens=256)
    # shown from 3.0 + hold at 45 ms each, token i arriving at 3.0 + 90 ms * i (padded): none waits
    assert hold >= (j - 1) * (0.09 - 0.045)
    assert p.hold_s(3.27, 3.0, forecast, latest_first_show_s=4.0, cloud_tokens=256) == pytest.approx(1.0)


def test_a_fast_cloud_on_a_device_that_runs_as_profiled_is_not_held():
    p = planner()
    for i in range(4):
        p.on_arrival(0.2 + 0.005 * i)
    forecast = p.handover(0.22, prompt_tokens=40, computed=0, received=4, in_flight=40, in_flight_since_s=0.0,
                          cloud_limit=64, streaming=True, chunk=512, max_tokens=256)
    assert forecast is not None and p.forecast_margin() == 0.0
    assert p.hold_s(0.22, 0.2, forecast, latest_first_show_s=2.0, cloud_tokens=256) == 0.0


def test_measured_steps_replace_the_profile_and_set_the_pace_after_the_hand_over():
    p = planner()
    p.on_step(512, 0.0, 512 / 100, decode=False)  # the host prefills at 100 tok/s, not 120
    for n in (1, 2, 1):
        p.on_step(n, 0.0, 0.05 + n / 100, decode=False)  # a short step costs 50 ms whatever its length
    p.on_step(1, 0.0, 0.04, decode=True)
    overhead, per_token = p.device_step_cost()
    assert per_token == pytest.approx(0.01) and overhead == pytest.approx(0.05)
    assert p.pace_s(handed_over=True) == pytest.approx(0.036) and p.pace_s(handed_over=False) == 0.045
    # a buffer that cannot last to the hand-over at the bound is spread (at most STRETCH bounds a token)
    assert p.pace_s(False, last_shown_s=1.0, to_show=9, handover=(1.55, 50)) == pytest.approx(0.055)
    assert p.pace_s(False, last_shown_s=1.0, to_show=1, handover=(5.0, 50)) == pytest.approx(0.045 * STRETCH)


def test_the_core_holds_its_first_cloud_token_and_lifts_the_hold_on_a_failure():
    from pdlink.edge.device_profile import DeviceProfile
    from pdlink.edge.session_settings import CloudEstimate, CloudPlan, SessionSettings

    device = DeviceProfile("d", prefill_tok_s=120.0, decode_s_per_token=0.025)
    settings = SessionSettings(True, 256, 0.045, 512, gap_bound_s=0.045, version=2,
                               predicted={"device_ttft_s": 12.5})
    plan = CloudPlan(settings, device, 1500, 256, 0.05, cloud=CloudEstimate(tpot_s=0.02))
    core = SessionCore(list(range(1500)), max_tokens=256, stop_token_ids=set(), chunk_size=512, pace_s=0.045,
                       max_gap_s=0.05, use_cloud=True, plan=plan)
    core.next_compute(0.0)
    for i in range(4):
        core.on_cloud_token(i, 7, 3.0 + 0.09 * i)
        assert core.release_due(3.0 + 0.09 * i) == []  # held: the stream would outrun 90 ms arrivals
    assert core.next_release_s() > 5.0
    core.on_cloud_failed("cloud_error: gone")
    assert [t.index for t in core.release_due(3.3)] == [0, 1, 2, 3]  # nothing more to wait for: shown at the pace


def test_gap_miss_names_the_cause_of_the_largest_gap():
    t = Timeline(cloud_tokens=[(1.0, 0), (1.04, 1), (1.30, 2)],
                 shown=[(1.0, 0, "cloud"), (1.04, 1, "cloud"), (1.30, 2, "cloud"), (1.34, 3, "device")])
    missed, cause = gap_miss(t, 0.05, handover_index=3, fallback=None)
    assert missed == pytest.approx(0.21) and cause.startswith("cloud_slow")
    t.shown[-1] = (1.60, 3, "device")
    assert gap_miss(t, 0.05, 3, None)[1].startswith("handover_late")
    assert gap_miss(t, 0.5, 3, None) == (0.0, None)
