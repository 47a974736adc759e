"""Settings v2 and its timeline model (no model, no clock): the decision rules, the model's accounting, the
plan's re-decisions, and agreement with an exhaustive grid search over the same model."""

from __future__ import annotations

import random

import pytest

from pdlink.edge.device_profile import DEVICE_PROFILES, DeviceProfile, named_profile
from pdlink.edge.session_settings import CloudEstimate, CloudPlan, SessionSettings
from pdlink.edge.settings_grid import grid_search
from pdlink.edge.settings_model import gap_bound_s, predict
from pdlink.edge.settings_v2 import NOT_NEEDED, decide_settings_v2, minimal_k

GPU = named_profile("phone-gpu")
CLOUD = CloudEstimate(rtt_s=0.05, prefill_tok_s=2000.0, tpot_s=0.02)


def test_the_model_counts_the_cloud_prefill_and_the_tokens_made_before_the_stop():
    s = SessionSettings(True, 500, 0.045, 512)
    p = predict(2000, 500, s, GPU, CLOUD)
    assert p.ttft_s == pytest.approx(CLOUD.ttft_s(2000)) and 0 < p.handover_j < 500
    assert p.cloud_tokens >= p.handover_j
    assert p.cloud_busy_s == pytest.approx(2000 / 2000.0 + (p.cloud_tokens - 1) * 0.02)
    assert p.catch_up_s > GPU.prefill_time_s(2000)
    alone = predict(2000, 500, SessionSettings(False, 0, 0.045, 512), GPU, CLOUD)
    assert alone.cloud_busy_s == 0 and alone.ttft_s == pytest.approx(GPU.prefill_time_s(2000))


def test_fewer_cloud_tokens_hand_over_earlier_and_a_too_small_k_stalls_the_stream():
    p = [predict(2000, 500, SessionSettings(True, k, 0.045, 512), GPU, CLOUD) for k in (1, 5, 80)]
    assert p[0].cloud_busy_s < p[1].cloud_busy_s < p[2].cloud_busy_s
    assert not p[0].feasible and p[0].max_gap_s > 0.5  # the device's own token comes long after the first
    assert p[2].feasible


def test_refinement_shrinks_the_device_prompt_from_where_the_first_token_finds_it():
    p = predict(4000, 300, SessionSettings(True, 300, 0.045, 256, refine_keep_ratio=0.5), GPU, CLOUD)
    full = predict(4000, 300, SessionSettings(True, 300, 0.045, 256), GPU, CLOUD)
    assert p.device_prompt_tokens < full.device_prompt_tokens == 4000
    assert p.device_prompt_tokens % 256 != 0 or p.device_prompt_tokens > 2000
    assert p.handover_j < full.handover_j


def test_without_an_slo_the_cloud_is_used_whenever_its_first_token_is_sooner():
    s = decide_settings_v2(2000, 256, GPU, CLOUD)
    assert s.use_cloud and s.version == 2 and s.refine_keep_ratio == 0.0
    tau_d, bound = GPU.decode_time_s(2000), gap_bound_s(GPU, 2000, 0.05)
    assert tau_d <= s.pace_s == bound  # the largest allowed pace
    assert s.predicted["cloud_busy_s"] > 0 and s.predicted["feasible"]
    k, _ = minimal_k(2000, 256, s, GPU, CLOUD)
    assert s.k == k and not predict(2000, 256, SessionSettings(True, k - 1, s.pace_s, s.chunk_size), GPU,
                                    CLOUD).feasible


def test_a_cloud_no_sooner_than_the_device_is_not_used():
    s = decide_settings_v2(100, 64, GPU, CloudEstimate(rtt_s=0.5, prefill_tok_s=100.0))
    assert not s.use_cloud and s.k == 0 and s.reason.startswith("cloud_slow")


def test_an_slo_the_device_meets_alone_costs_no_cloud_seconds():
    device_ttft = GPU.prefill_time_s(2000)
    s = decide_settings_v2(2000, 256, GPU, CLOUD, ttft_slo_s=device_ttft + 0.1)
    assert not s.use_cloud and s.predicted["cloud_busy_s"] == 0 and s.reason.startswith(NOT_NEEDED)
    tight = decide_settings_v2(2000, 256, GPU, CLOUD, ttft_slo_s=device_ttft - 0.1)
    assert tight.use_cloud and "SLO" not in tight.reason


def test_an_slo_even_the_cloud_misses_still_uses_the_cloud_and_says_so():
    s = decide_settings_v2(2000, 256, GPU, CLOUD, ttft_slo_s=0.01)
    assert s.use_cloud and "missed even by the cloud" in s.reason


def test_the_pace_bound_is_the_device_tpot_when_that_is_slower_than_the_gap_bound():
    phone = named_profile("phone")
    s = decide_settings_v2(300, 256, phone, CLOUD, max_gap_s=0.03)
    assert s.pace_s == pytest.approx(phone.decode_time_s(300)) == pytest.approx(s.gap_bound_s)


def test_refinement_is_chosen_only_when_allowed_and_it_pays():
    off = decide_settings_v2(3000, 256, GPU, CLOUD, refine="off", keep_ratio=0.3)
    auto = decide_settings_v2(3000, 256, GPU, CLOUD, refine="auto", keep_ratio=0.3)
    on = decide_settings_v2(3000, 256, GPU, CLOUD, refine="on", keep_ratio=0.3)
    assert off.refine_keep_ratio == 0.0 and on.refine_keep_ratio == auto.refine_keep_ratio == 0.3
    assert auto.predicted["cloud_busy_s"] < off.predicted["cloud_busy_s"]
    with pytest.raises(ValueError, match="refine"):
        decide_settings_v2(3000, 256, GPU, CLOUD, refine="sometimes")


def test_the_plan_keeps_the_pace_in_bounds_and_re_decides_k_with_the_real_ttft():
    s = decide_settings_v2(2000, 256, GPU, CLOUD)
    plan = CloudPlan(s, GPU, 2000, 256, 0.05, cloud=CLOUD)
    tau_d = GPU.decode_time_s(2000)
    for first in (0.1, 1.0, 5.0):
        assert tau_d <= plan.first_token_pace(first, s.k) <= s.gap_bound_s
    reason, k = plan.after_estimate(0.0, 1.8, s.k)  # later than expected: the buffer needs fewer tokens
    assert reason is None and k < s.k
    assert plan.after_estimate(0.0, 0.3, s.k) == (None, s.k)  # sooner: k is never raised
    assert plan.after_estimate(0.0, CLOUD.ttft_s(2000), s.k) == (None, s.k)
    reason, _ = plan.after_estimate(0.0, 100.0, s.k)
    assert reason.startswith("cloud_slow")


def test_v2_is_the_session_default_and_v1_stays_available():
    from pdlink.edge.cloud_link import CloudTarget
    from pdlink.edge.session import GenerationRequest, Session, SessionConfig

    for version in (2, 1):
        session = Session(SessionConfig(cloud=CloudTarget("ws://127.0.0.1:1"), device_profile="phone-gpu",
                                        settings_version=version))
        try:
            s = session._settings(GenerationRequest(max_tokens=64), 2000)
        finally:
            session.close()
        assert s.version == version and s.use_cloud and s.predicted["cloud_busy_s"] > 0
        assert s.chunk_size <= 512  # the session's chunk is the largest it may use


def requests(n: int, seed: int = 0):
    rng = random.Random(seed)
    names = ("phone-cpu", "phone-gpu", "phone-npu", "laptop-cpu", "laptop-gpu")
    clouds = (CLOUD, CloudEstimate(rtt_s=0.1, queue_s=0.2, prefill_tok_s=4000.0, tpot_s=0.03))
    slow = DeviceProfile(name="overhead", prefill_tok_s=400.0, decode_s_per_token=0.03, chunk_overhead_s=0.02)
    for i in range(n):
        device = slow if i % 11 == 0 else DEVICE_PROFILES[names[i % len(names)]]
        yield (int(rng.uniform(16, 6000)), rng.randint(1, 256), device, clouds[i % 2],
               ("off", "auto")[i % 3 == 0], (None, 1.0, 3.0)[i % 5 % 3])


def test_v2_matches_an_exhaustive_grid_search_on_synthetic_requests():
    agree, total = 0, 0
    for L, max_tokens, device, cloud, refine, slo in requests(200):
        s = decide_settings_v2(L, max_tokens, device, cloud, refine=refine, keep_ratio=0.4, ttft_slo_s=slo)
        grid = grid_search(L, max_tokens, device, cloud, refine=refine, keep_ratio=0.4, ttft_slo_s=slo, paces=6,
                           rhos=4)
        mine = predict(L, max_tokens, s, device, cloud)
        total += 1
        agree += mine.feasible and mine.cloud_busy_s <= 1.05 * grid.prediction.cloud_busy_s + 1e-9
        assert mine.ttft_s <= max(grid.prediction.ttft_s, mine.device_ttft_s) + 1e-9
    assert agree >= 0.95 * total, f"{agree}/{total}"
