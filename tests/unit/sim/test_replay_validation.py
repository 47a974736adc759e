"""The simulator set up as a replay runs: the replay server's limits, the devices' prior of the cloud, TTFT
counted from the device's start (the wait for a busy device apart), and the prefill fit of the measured
local cloud profile."""

from __future__ import annotations

import json

import pytest

from pdlink.bench.replay_device import replay_cloud_estimate
from pdlink.bench.replay_rig import CLOUD_PREFILL_CHUNK, replay_server_limits
from pdlink.bench.trace_sim import replay_cloud_profile, validate_replay
from pdlink.sim import CloudProfile, SimRequest, Simulation
from pdlink.sim.cloud_profile import named_cloud_profile
from pdlink.sim.local_cloud_profile import fit_decode_halving, fit_prefill
from pdlink.traces.report import RequestRecord, TraceBenchConfig, summarize

CLOUD = CloudProfile("c", prefill_tok_s=300.0, tpot_by_batch=((1, 0.02),), max_concurrent=64, max_sequences=16,
                     step_token_budget=512, prefill_chunk_tokens=256, ttft_budget_s=10.0)


def test_the_replay_servers_limits_replace_the_server_defaults():
    p = replay_cloud_profile(CLOUD, devices=1)
    assert (p.prefill_chunk_tokens, p.step_token_budget) == (CLOUD_PREFILL_CHUNK, 2 * CLOUD_PREFILL_CHUNK)
    assert p.sequence_limit == 2 and p.ttft_budget_s == replay_server_limits(1)["ttft_budget_s"]
    assert (p.prefill_tok_s, p.tpot_by_batch) == (CLOUD.prefill_tok_s, CLOUD.tpot_by_batch)  # speeds kept


def test_a_3300_token_prompt_is_rejected_under_the_default_budget_but_served_as_the_replay_serves_it():
    req = [SimRequest(0.0, 3300, 8)]
    (r,) = Simulation(req, mode="cloud", device="phone", cloud=CLOUD).run()
    assert r.fallback is not None and r.cloud_busy_s == 0  # 11 s: over the 10 s TTFT budget, refused
    (r,) = Simulation(req, mode="cloud", device="phone", cloud=replay_cloud_profile(CLOUD, 1)).run()
    assert r.fallback is None and r.ttft_s == pytest.approx(0.04 + 3300 / 300, rel=0.01)


def test_the_replay_devices_prior_is_the_sessions_default_with_the_rtt():
    est = replay_cloud_estimate(TraceBenchConfig(net_rtt_ms=40.0))
    assert est.rtt_s == pytest.approx(0.04) and est.prefill_tok_s == 2000.0  # CloudEstimate's default


def test_ttft_counts_from_the_devices_start_and_the_report_adds_the_wait():
    recs = Simulation([SimRequest(0.0, 100, 1), SimRequest(0.0, 100, 1)], mode="device",
                      device=slow_device(), cloud=CLOUD).run()
    assert recs[0].ttft_s == pytest.approx(recs[1].ttft_s) and recs[1].device_wait_s == pytest.approx(recs[0].e2e_s)
    rep = summarize(TraceBenchConfig(devices=1, mode="device"), recs)
    assert rep["ttft_p50_s"] == pytest.approx(recs[0].ttft_s)
    assert rep["ttft_from_arrival_p99_s"] > rep["ttft_p99_s"]


def slow_device():
    from pdlink.edge.device_profile import DeviceProfile

    return DeviceProfile("d", prefill_tok_s=100.0, decode_s_per_token=0.05)


def test_prefill_fit_recovers_speed_and_context_slowdown():
    r, h = 250.0, 6000.0
    pts = [(n, c, n / r * (1 + (c + n / 2) / h)) for n, c in ((1024, 0), (1024, 1024), (952, 2048), (512, 0))]
    rate, halving = fit_prefill(pts)
    assert rate == pytest.approx(r, rel=1e-6) and halving == pytest.approx(h, rel=1e-6)
    assert fit_prefill([(100, 0, 1.0), (100, 0, 1.0)]) == (100.0, 0.0)  # one context: no slowdown to fit


def test_decode_halving_fit_from_two_contexts():
    a, b = 0.010, 0.010 / 2000  # halving 2000 tokens
    assert fit_decode_halving((256, a + b * 256), (3000, a + b * 3000)) == pytest.approx(2000)
    assert fit_decode_halving((3000, a + b * 3000), (256, a + b * 256)) == pytest.approx(2000)  # any order
    assert fit_decode_halving((256, 0.02), (3000, 0.02)) == 0.0  # not slower with context: no halving


def test_validate_replay_simulates_each_mode_with_the_replays_settings(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.0000000,2000,8\n"
                     "2023-11-16 18:17:04.0000000,2500,8\n")
    cfg = TraceBenchConfig(output=str(tmp_path), trace=str(trace), devices=1, max_output_tokens=8,
                           device_profile="phone", mode="cloud")
    rec = RequestRecord(0, 0.0, 2000, 8, 7.0, 0.05, 0.05, 7.2, 6.8, None, None)
    (tmp_path / "trace-cloud.json").write_text(json.dumps(summarize(cfg, [rec])))
    v = validate_replay(tmp_path, named_cloud_profile("local-cpu"))
    assert set(v["modes"]) == {"cloud"} and json.loads((tmp_path / "validation.json").read_text())["modes"]
    sim = json.loads((tmp_path / "trace-sim-cloud.json").read_text())
    assert sim["fallback_rate"] == 0  # served: the replay server's 600 s budget, not the default 10 s
    assert v["modes"]["cloud"]["cloud_profile"]["prefill_chunk_tokens"] == CLOUD_PREFILL_CHUNK
    assert set(v["modes"]["cloud"]["keys"]) == {"ttft_p50_s", "ttft_p99_s", "cloud_busy_s_per_request"}
