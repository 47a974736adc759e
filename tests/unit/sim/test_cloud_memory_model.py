"""The GPU cloud's memory model: calibration against published TPOT, KV room, and the SLO-aware pd policy."""

import pytest

from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.session_settings import SessionSettings
from pdlink.sim import CloudProfile, Network, SimRequest, Simulation, named_cloud_profile
from pdlink.sim.cloud_calibration import MODELS, PUBLISHED_TPOT, tpot_errors
from pdlink.sim.policy import default_policy
from pdlink.traces.request import TraceRequest
from pdlink.traces.workload import Workload


def test_llama_1b_bytes_and_kv_capacity():
    m = MODELS["llama-3.2-1b"]
    assert m.kv_bytes_per_token == 32 * 1024  # 16 layers x (K, V) x 8 heads x 64 x bf16
    h100, l4 = named_cloud_profile("h100-vllm"), named_cloud_profile("l4-vllm")
    assert h100.capacity_tokens == pytest.approx((0.9 * 80e9 - 2.472e9) / 32768, abs=1)
    assert 500_000 < l4.capacity_tokens < 600_000


@pytest.mark.parametrize("name", sorted(PUBLISHED_TPOT))
def test_the_model_reproduces_the_published_tpot_points(name):
    assert max(e["relative_error"] for e in tpot_errors(name)) < 0.2


def test_decode_step_reads_weights_and_every_sequences_kv():
    p = named_cloud_profile("h100-vllm")
    bw = p.mem_bw_bytes_s
    one = p.step_s(0.0, 1, 1000)
    assert one == pytest.approx(p.step_overhead_s + p.seq_overhead_s + (p.weights_bytes + 1000 * 32768) / bw)
    # 64 sequences at 8k: the KV reads (17 GB) dominate the step
    many = p.step_s(0.0, 64, 64 * 8000)
    assert many - one == pytest.approx(63 * p.seq_overhead_s + 63_000 * 8 * 32768 / bw, rel=0.02)
    # a prefill chunk bigger than the weight read replaces it (the weights are read once per step)
    assert p.step_s(0.05, 0, 0) == pytest.approx(p.step_overhead_s + 0.05)
    assert p.decode_step_s(0) == 0


def test_table_form_still_works():
    p = CloudProfile("t", prefill_tok_s=100.0, tpot_by_batch=((1, 0.01), (9, 0.03)))
    assert not p.memory_bound and p.capacity_tokens == 0
    assert p.step_s(0.5, 5) == pytest.approx(0.5 + 0.02)
    with pytest.raises(ValueError, match="tpot_by_batch points or the memory figures"):
        CloudProfile("none", prefill_tok_s=100.0)



def test_table_form_scales_decode_with_the_context_it_was_timed_at():
    p = CloudProfile("t", prefill_tok_s=100.0, tpot_by_batch=((1, 0.02), (2, 0.03)), tpot_context_tokens=3000,
                     decode_halving_tokens=1000)
    assert p.decode_step_s(1, 3000) == pytest.approx(0.02)  # the timed point itself
    assert p.decode_step_s(1, 0) == pytest.approx(0.02 / 4)  # (1 + 0) / (1 + 3)
    assert p.decode_step_s(2, 2 * 1000) == pytest.approx(0.03 * 2 / 4)  # the mean context per sequence counts
    assert p.step_s(0.5, 1, 1000) == pytest.approx(0.5 + 0.01)
    with pytest.raises(ValueError, match="decode_halving_tokens"):
        CloudProfile("t", prefill_tok_s=100.0, tpot_by_batch=((1, 0.02),), decode_halving_tokens=-1)


SMALL_GPU = CloudProfile("small", prefill_tok_s=10_000.0, model="m", weights_bytes=1e9, kv_bytes_per_token=1e5,
                         hbm_bytes=(1e9 + 5000 * 1e5) / 0.9, mem_bw_bytes_s=1e12, step_token_budget=2048,
                         prefill_chunk_tokens=1024)  # KV room: 5000 tokens


def test_kv_cap_queues_a_request_until_room_is_freed_and_rejects_one_that_never_fits():
    assert SMALL_GPU.capacity_tokens == 5000
    dev = DeviceProfile("d", prefill_tok_s=100.0, decode_s_per_token=0.05)
    recs = Simulation([SimRequest(0.0, 3000, 100), SimRequest(0.0, 3000, 100)], mode="cloud", device=dev,
                      cloud=SMALL_GPU, devices=2, network=Network(0.0)).run()
    first, second = sorted(recs, key=lambda r: r.ttft_s)
    assert second.ttft_s > first.e2e_s - 0.01  # waited for the first to end: 2 x 3100 tokens do not fit
    sim = Simulation([SimRequest(0.0, 6000, 10)], mode="pd", device=dev, cloud=SMALL_GPU, network=Network(0.0),
                     policy=lambda L, m, d, c: SessionSettings(True, m, 0.05, 512))
    (r,) = sim.run()
    assert r.fallback and "KV cache" in r.fallback and r.cloud_busy_s == 0 and r.output_tokens == 10
    assert sim.cloud.stats()["cloud_rejected"] == 1


def test_slo_aware_policy_keeps_short_prompts_on_the_device():
    dev = DeviceProfile("fast", prefill_tok_s=2000.0, decode_s_per_token=0.01)
    cloud = named_cloud_profile("h100-vllm")
    reqs = [SimRequest(0.0, 1000, 50), SimRequest(0.0, 8000, 50)]
    sim = Simulation(reqs, mode="pd", device=dev, cloud=cloud, devices=2, ttft_slo_s=1.0)
    short, long = sim.run()
    assert short.cloud_busy_s == 0 and short.fallback.startswith("cloud_not_needed") and short.ttft_s <= 1.0
    assert long.cloud_busy_s > 0 and long.ttft_s < 1.0
    # without an SLO (or with v1) the short prompt uses the cloud for the sooner first token
    short_no_slo, _ = Simulation(reqs, mode="pd", device=dev, cloud=cloud, devices=2).run()
    assert short_no_slo.cloud_busy_s > 0
    with pytest.raises(ValueError, match="settings version"):
        default_policy(version=3)


def test_v2_gap_bound_is_honoured_in_the_simulator():
    dev = DeviceProfile("slowdecode", prefill_tok_s=3000.0, decode_s_per_token=0.08)  # TPOT above max_gap
    cloud = named_cloud_profile("h100-vllm")
    (r,) = Simulation([SimRequest(0.0, 4000, 100)], mode="pd", device=dev, cloud=cloud).run()
    assert r.handover_index is not None and r.max_gap_s <= 0.08 * (1 + 4000 / 1e9) + 1e-6


def test_poisson_retiming_keeps_order_and_mean_rate():
    w = Workload("w", tuple(TraceRequest(arrival_s=float(i // 10), input_tokens=10, output_tokens=1)
                            for i in range(2000)))
    p = w.poisson(seed=1)
    assert [r.input_tokens for r in p] == [r.input_tokens for r in w] and p.requests[0].arrival_s == 0
    assert p.rate_rps == pytest.approx(w.rate_rps, rel=0.1) and w.poisson(1).requests == p.requests
