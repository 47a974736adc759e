"""Device profiles: the table spans real devices with their sources; --device-profile takes a name or a JSON file."""

from __future__ import annotations

import json

import pytest

from pdlink.edge.device_profile import DEVICE_PROFILES, DeviceProfile, named_profile, resolve_profile

KINDS = ("phone-cpu", "phone-gpu", "phone-npu", "laptop-cpu", "laptop-gpu")


def test_the_table_spans_cpu_gpu_and_npu_devices_each_with_its_source_in_every_output():
    assert set(KINDS) <= set(DEVICE_PROFILES)
    for name in KINDS:
        profile = DEVICE_PROFILES[name]
        assert "https://" in profile.source and profile.to_json()["source"] == profile.source
    rate = {n: DEVICE_PROFILES[n].prefill_tok_s for n in KINDS}
    assert rate["phone-npu"] >= 1000 > rate["phone-gpu"] > 10 * rate["phone-cpu"]
    assert rate["laptop-gpu"] > 10 * rate["laptop-cpu"]


def test_phone_and_laptop_stay_names_of_the_cpu_profiles():
    assert named_profile("phone").prefill_tok_s == 60.3 and named_profile("phone").name == "phone"
    assert resolve_profile("laptop") == named_profile("laptop")
    assert named_profile("laptop").decode_s_per_token == DEVICE_PROFILES["laptop-cpu"].decode_s_per_token


def test_chunk_overhead_is_paid_once_per_prefill_call():
    p = DeviceProfile(name="x", prefill_tok_s=100.0, decode_s_per_token=0.05, chunk_overhead_s=0.01)
    assert p.prefill_time_s(100) == pytest.approx(1.01)
    assert p.chunked_prefill_time_s(1000, 100) == pytest.approx(10.0 + 10 * 0.01)
    h = DeviceProfile(name="h", prefill_tok_s=100.0, decode_s_per_token=0.05, prefill_halving_tokens=500)
    whole = h.prefill_time_s(1000, 0)
    assert sum(h.prefill_time_s(100, c) for c in range(0, 1000, 100)) == pytest.approx(whole)
    assert h.chunked_prefill_time_s(1000, 64) == pytest.approx(whole)


def write(tmp_path, data, name="p.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


GOOD = {"name": "tablet", "prefill_tok_s": 300, "decode_s_per_token": 0.04, "prefill_halving_tokens": 5000,
        "source": "measured on a tablet"}


def test_a_profile_file_gives_its_fields(tmp_path):
    profile = resolve_profile(write(tmp_path, GOOD))
    assert profile.name == "tablet" and profile.prefill_tok_s == 300 and profile.decode_halving_tokens == 0
    assert profile.source == "measured on a tablet" and profile.emulated


@pytest.mark.parametrize("change, message", [
    ({"prefill_tok_s": None}, "missing field 'prefill_tok_s'"),
    ({"decode_s_per_token": "fast"}, "field 'decode_s_per_token' must be a number"),
    ({"prefill_tok_s": True}, "field 'prefill_tok_s' must be a number"),
    ({"name": 3}, "field 'name' must be a str"),
    ({"prefill_tok_s": 0}, "field 'prefill_tok_s' must be > 0"),
    ({"decode_s_per_token": -0.1}, "field 'decode_s_per_token' must be > 0"),
    ({"prefill_halving_tokens": -1}, "field 'prefill_halving_tokens' must be >= 0"),
    ({"chunk_overhead_s": -1}, "field 'chunk_overhead_s' must be >= 0"),
    ({"prefil_tok_s": 3}, "unknown field 'prefil_tok_s'"),
])
def test_a_bad_profile_file_names_the_file_and_the_field(tmp_path, change, message):
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as info:
        resolve_profile(path)
    assert path in str(info.value)


def test_a_profile_file_without_a_name_is_named_after_the_file(tmp_path):
    path = tmp_path / "my-tablet.json"
    path.write_text(json.dumps({"prefill_tok_s": 120, "decode_s_per_token": 0.025}))
    profile = resolve_profile(str(path))
    assert (profile.name, profile.prefill_tok_s, profile.decode_s_per_token) == ("my-tablet", 120, 0.025)


def test_unreadable_files_and_unknown_names_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="not JSON"):
        resolve_profile(write(tmp_path, "{nope"))
    with pytest.raises(ValueError, match="JSON object"):
        resolve_profile(write(tmp_path, "[1, 2]"))
    with pytest.raises(ValueError, match="cannot be read"):
        resolve_profile(str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="phone-npu"):
        resolve_profile("toaster")


def test_session_config_checks_the_profile_file_once(tmp_path):
    from pdlink.edge.session import SessionConfig

    SessionConfig(device_profile=write(tmp_path, GOOD))
    with pytest.raises(ValueError, match="decode_s_per_token"):
        SessionConfig(device_profile=write(tmp_path, {"name": "x", "prefill_tok_s": 1}, "bad.json"))
    with pytest.raises(ValueError, match="settings_version"):
        SessionConfig(settings_version=3)
