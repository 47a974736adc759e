"""Settings decision, device profiles and the device/network emulation (no model)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pdlink.edge.device_profile import (
    DEVICE_PROFILES, DeviceProfile, load_profile, named_profile, profile_names, profile_store_path, save_profile,
)
from pdlink.edge.emulation import EmulatedDevice, NetworkEmulation, NetworkLink
from pdlink.edge.session_settings import CloudEstimate, cloud_tokens_needed, decide_settings, retuned_pace

PHONE = named_profile("phone")


def test_named_profiles_cite_their_source_and_unknown_names_list_the_choices():
    assert {"phone", "laptop"} <= set(profile_names())  # aliases of phone-cpu / laptop-cpu (the CLI contract)
    for profile in DEVICE_PROFILES.values():
        assert profile.source.count("https://") >= 1 and profile.emulated
    with pytest.raises(ValueError, match="laptop"):
        named_profile("toaster")


def test_profile_times_grow_with_length_and_context():
    assert PHONE.prefill_time_s(1024, 0) > 2 * PHONE.prefill_time_s(512, 0) > 0
    assert PHONE.decode_time_s(4096) > PHONE.decode_time_s(0) == pytest.approx(1 / 19.2)
    with pytest.raises(ValueError):
        DeviceProfile(name="bad", prefill_tok_s=0, decode_s_per_token=0.1)


def test_profiles_round_trip_through_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PDLINK_CACHE_DIR", str(tmp_path))
    path = profile_store_path("abcdef0123456789ff", 2)
    assert path.parent == tmp_path / "profiles" and load_profile(path) is None
    save_profile(PHONE, path)
    assert load_profile(path) == PHONE
    path.write_text("{not json")
    assert load_profile(path) is None


def test_a_cloud_slower_than_the_device_is_not_used():
    s = decide_settings(100, 64, PHONE, CloudEstimate(rtt_s=0.1, prefill_tok_s=10.0))
    assert not s.use_cloud and s.k == 0 and s.reason.startswith("cloud_slow")


@pytest.mark.parametrize("L", [256, 1024, 2048])
def test_the_closed_form_keeps_the_buffer_until_the_device_catches_up(L):
    cloud = CloudEstimate(rtt_s=0.05, prefill_tok_s=2000.0)
    s = decide_settings(L, 10_000, PHONE, cloud, max_gap_s=0.05, max_k=10_000)
    assert s.use_cloud and 0 < s.pace_s <= 0.05
    j, _ = cloud_tokens_needed(L, PHONE, cloud.ttft_s(L), s.pace_s, 10_000)
    catch_up = PHONE.prefill_time_s(L, 0) + PHONE.prefill_time_s(j, L)
    assert cloud.ttft_s(L) + j * s.pace_s >= catch_up + PHONE.decode_time_s(L) - 1e-9
    assert j <= s.k <= 10_000


def test_k_never_exceeds_the_answer_or_the_server_limit():
    s = decide_settings(4096, 32, PHONE, CloudEstimate(), max_k=16)
    assert s.k <= 16


def test_retuned_pace_stays_between_the_device_pace_and_the_gap_bound():
    s = decide_settings(1024, 500, PHONE, CloudEstimate(), max_gap_s=0.05, max_k=500)
    for first in (0.1, 1.0, 10.0):
        assert 0 < retuned_pace(s, first, s.k, 0.05) <= 0.05


class FakeEngine:
    def __init__(self, step_s: float):
        self.step_s, self.computed = step_s, 0

    def num_computed_tokens(self, seq_id):
        return self.computed

    def prefill(self, seq_id, ids):
        time.sleep(self.step_s)
        self.computed += len(ids)
        return np.zeros(4)

    def decode(self, seq_id, token):
        return self.prefill(seq_id, [token])

    def decode_greedy(self, seq_id, token):
        return int(self.decode(seq_id, token).argmax())


def test_emulated_device_waits_out_the_profile_time_and_counts_slower_host_steps():
    slow = DeviceProfile(name="slow", prefill_tok_s=100.0, decode_s_per_token=0.02)
    dev = EmulatedDevice(FakeEngine(0.0), slow)
    t0 = time.perf_counter()
    dev.prefill(0, [1] * 5)  # 0.05 s on the profile
    dev.decode(0, 1)  # 0.02 s
    assert time.perf_counter() - t0 >= 0.07 and dev.host_slower_steps == 0 and dev.waited_s > 0.06
    fast = DeviceProfile(name="fast", prefill_tok_s=1e6, decode_s_per_token=1e-6)
    dev = EmulatedDevice(FakeEngine(0.01), fast)
    dev.decode(0, 1)
    assert dev.host_slower_steps == 1 and dev.label()["device_profile"] == "fast"
    assert dev.engine.computed == 1
    assert not hasattr(dev, "num_computed_tokens")  # an explicit step interface, no pass-through to the engine


def test_the_session_names_no_emulation_class_and_takes_a_link_factory():
    import inspect

    from pdlink.edge import session_result, session_run
    from pdlink.edge.device_engine import DeviceEngine

    for module in (session_run, session_result):
        assert "EmulatedDevice" not in inspect.getsource(module) and "EmulatedCloudLink" not in inspect.getsource(module)
    from tests.unit.edge.test_session_shell import FakeEngine as ShellEngine

    assert isinstance(ShellEngine(), DeviceEngine)


def test_network_link_adds_latency_and_bandwidth_and_keeps_order():
    link = NetworkLink(NetworkEmulation(rtt_ms=100, jitter_ms=50, bandwidth_mbps=1.0, seed=3))
    times = [link.delivery_s(t * 0.001, 1250) for t in range(50)]  # 1250 B at 1 Mbit/s = 10 ms
    assert times == sorted(times)
    assert all(t - i * 0.001 >= 0.05 + 0.01 - 1e-9 for i, t in enumerate(times))
    plain = NetworkLink(NetworkEmulation())
    assert plain.delivery_s(1.0, 10_000) == 1.0 and not NetworkEmulation().active
    with pytest.raises(ValueError, match="net-rtt"):
        NetworkEmulation(rtt_ms=-1)


def test_refinement_is_chosen_only_when_asked_and_it_pays():
    slow_cloud = CloudEstimate(rtt_s=0.05, prefill_tok_s=300.0)
    off = decide_settings(400, 256, PHONE, slow_cloud, refine="off")
    on = decide_settings(400, 256, PHONE, slow_cloud, refine="on", keep_ratio=0.3)
    auto = decide_settings(400, 256, PHONE, slow_cloud, refine="auto", keep_ratio=0.3)
    assert off.refine_keep_ratio == 0.0 and on.refine_keep_ratio == 0.3
    assert on.k < off.k and on.predicted["catch_up_s"] < off.predicted["catch_up_s"]
    assert auto.refine_keep_ratio == 0.3  # cuts j by far more than a quarter here
    barely = decide_settings(400, 256, PHONE, slow_cloud, refine="auto", keep_ratio=0.98)
    assert barely.refine_keep_ratio == 0.0 and barely.k == off.k
    with pytest.raises(ValueError, match="refine"):
        decide_settings(400, 256, PHONE, slow_cloud, refine="sometimes")


def test_emulated_greedy_decode_takes_the_profile_time_too():
    dev = EmulatedDevice(FakeEngine(0.0), DeviceProfile(name="slow", prefill_tok_s=100.0, decode_s_per_token=0.03))
    t0 = time.perf_counter()
    assert dev.decode_greedy(0, 1) == 0
    assert time.perf_counter() - t0 >= 0.03 and dev.steps == 1 and dev.engine.computed == 1
