"""Small simulated scenarios with answers checkable by hand."""

import math

import pytest

from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.session_settings import SessionSettings
from pdlink.sim import BatchingCloud, CloudModel, CloudProfile, CloudRequest, Network, SimRequest, Simulation

DEV = DeviceProfile("slow", prefill_tok_s=100.0, decode_s_per_token=0.05)
CLOUD = CloudProfile("c", prefill_tok_s=1000.0, tpot_by_batch=((1, 0.01),), max_concurrent=64, step_token_budget=512,
                     prefill_chunk_tokens=256)


def run(mode, requests, device=DEV, cloud=CLOUD, rtt=0.04, **kw):
    return Simulation(requests, mode=mode, device=device, cloud=cloud, network=Network(rtt), **kw).run()


def test_device_mode_is_prefill_then_decode():
    (r,) = run("device", [SimRequest(0.0, 1000, 50)])
    assert r.ttft_s == pytest.approx(1000 / 100)  # prefill; its logits give the first token
    assert r.e2e_s == pytest.approx(10.0 + 49 * 0.05)
    assert r.cloud_busy_s == 0 and r.device_tokens == 50 and r.max_gap_s == pytest.approx(0.05)


def test_cloud_mode_ttft_is_rtt_plus_prefill():
    (r,) = run("cloud", [SimRequest(0.0, 1000, 50)])
    assert r.ttft_s == pytest.approx(0.04 + 1000 / 1000)
    assert r.cloud_busy_s == pytest.approx(1.0 + 49 * 0.01)  # prefill + 49 decode steps at batch 1
    assert r.cloud_tokens == 50 and r.e2e_s == pytest.approx(1.04 + 49 * 0.01)


def test_a_busy_device_makes_the_next_request_wait():
    a, b = run("device", [SimRequest(0.0, 100, 1), SimRequest(0.5, 100, 1)])
    assert a.ttft_s == pytest.approx(1.0) and b.ttft_s == pytest.approx(1.0)  # from the device's start,
    assert a.device_wait_s == 0 and b.device_wait_s == pytest.approx(0.5)  # as a replay counts it
    a, b = run("device", [SimRequest(0.0, 100, 1), SimRequest(0.5, 100, 1)], devices=2)
    assert b.ttft_s == pytest.approx(1.0)


def test_pd_hands_over_where_the_catch_up_closed_form_says():
    # The cloud streams one token per tau_c; the device prefills the prompt (P = L / p_d), then every received
    # token. Catch-up j solves j = 1 + (P + j / p_d - T1) / tau_c  =>  j = (1 + (P - T1) / tau_c) / (1 - 1 / (p_d tau_c)).
    device = DeviceProfile("fast", prefill_tok_s=1000.0, decode_s_per_token=0.03)
    cloud = CloudProfile("c", prefill_tok_s=10_000.0, tpot_by_batch=((1, 0.02),), step_token_budget=2048,
                         prefill_chunk_tokens=2048)
    everything = lambda L, m, d, c: SessionSettings(True, m, 0.03, 512, reason="test: k = all")  # noqa: E731
    (r,) = run("pd", [SimRequest(0.0, 2000, 400)], device=device, cloud=cloud, policy=everything)
    t1 = 0.02 + 2000 / 10_000 + 0.02  # first cloud token at the device
    j = (1 + (2.0 - t1) / 0.02) / (1 - 1 / (1000 * 0.02))
    assert abs(r.handover_index - j) <= 1.5
    assert r.cloud_tokens == r.handover_index and r.device_tokens == 400 - r.handover_index


def test_pd_default_policy_keeps_the_shown_stream_within_the_gap_bound():
    device = DeviceProfile("fast", prefill_tok_s=1000.0, decode_s_per_token=0.03)
    cloud = CloudProfile("c", prefill_tok_s=10_000.0, tpot_by_batch=((1, 0.005),))
    (r,) = run("pd", [SimRequest(0.0, 2000, 400)], device=device, cloud=cloud)
    assert r.handover_index is not None and r.fallback is None
    assert r.max_gap_s <= 0.05 + 1e-9 and r.ttft_s == pytest.approx(0.02 + 0.2 + 0.02, rel=0.05)
    assert r.cloud_busy_s < 0.2 + 400 * 0.005 / 2  # released early: not the whole answer


def test_saturated_cloud_ttft_grows_with_the_rate():
    def p90_ttft(gap_s):
        recs = run("cloud", [SimRequest(i * gap_s, 500, 20) for i in range(40)], devices=40)
        return sorted(math.inf if r.ttft_s is None else r.ttft_s for r in recs)[35]
    slow, fast = p90_ttft(2.0), p90_ttft(0.3)  # service: 0.5 s of prefill each
    assert slow == pytest.approx(0.04 + 0.5, rel=0.1)
    assert fast > 3 * slow


def test_admission_limit_rejects_and_pd_falls_back_to_the_device():
    cloud = CloudProfile("tiny", prefill_tok_s=1000.0, tpot_by_batch=((1, 0.01),), max_concurrent=1,
                         step_token_budget=512, prefill_chunk_tokens=256)
    recs = run("pd", [SimRequest(0.0, 500, 10), SimRequest(0.0, 500, 10)], cloud=cloud, devices=2)
    rejected = [r for r in recs if r.fallback and r.fallback.startswith("rejected")]
    assert len(rejected) == 1 and rejected[0].ttft_s == pytest.approx(500 / 100)
    assert rejected[0].cloud_busy_s == 0 and rejected[0].output_tokens == 10


class InstantCloud(CloudModel):
    """A fake cloud: every token 1 ms after the request arrives, no queue, no cost."""

    def __init__(self, env):
        self.env, self.stops = env, []

    def submit(self, request: CloudRequest, client) -> None:
        client.on_accepted(0.001)
        def stream():
            for i in range(request.max_tokens):
                yield self.env.timeout(0.001)
                client.on_token(i)
            client.on_done("max_leading_tokens", 0.0)
        self.env.process(stream())

    def stop(self, key, after_index: int) -> None:
        self.stops.append((key, after_index))


def test_a_swapped_in_cloud_model_works():
    (r,) = run("cloud", [SimRequest(0.0, 1000, 5)], cloud=InstantCloud, rtt=0.0)
    assert r.ttft_s == pytest.approx(0.001) and r.cloud_tokens == 5
    assert math.isclose(r.e2e_s, 0.005)


def test_batching_cloud_profile_interpolates_tpot():
    p = CloudProfile("p", prefill_tok_s=1.0, tpot_by_batch=((1, 0.01), (9, 0.03)))
    assert p.decode_step_s(5) == pytest.approx(0.02) and p.decode_step_s(17) == pytest.approx(0.05)
    assert p.decode_step_s(0) == 0 and isinstance(BatchingCloud, type)
