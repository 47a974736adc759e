"""A tiny trace replay on the real model: 2 emulated devices, 3 requests of a temporary Azure-format trace,
a real cloud server on loopback; pd mode then device mode. The report has the contract's keys, and pd's
answers equal device mode's token for token (greedy, same package both sides, refinement off) wherever the
request did not fall back."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.model

KEYS = {"ttft_p50_s", "ttft_p99_s", "max_gap_s", "p99_gap_s", "cloud_busy_s_per_request", "handover_rate",
        "fallback_rate", "requests", "records", "caps", "config", "machine", "cloud_server", "emulation", "wall_s"}


def _trace(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:17:03.0000000,300,24\n"
                    "2023-11-16 18:17:03.2000000,400,16\n"
                    "2023-11-16 18:17:03.5000000,500,9\n")
    return path


def _profile(tmp_path):
    # Near the phone profile, so the test takes seconds, and well slower than the 1-thread cloud on this shared
    # machine (else pd gives the cloud up: "cloud_slow", and the test fails: it compares hand-overs).
    path = tmp_path / "test-device.json"
    path.write_text(json.dumps({"name": "test-device", "prefill_tok_s": 40.0, "decode_s_per_token": 0.03,
                                "source": "test profile, not a measured device"}))
    return path


def test_tiny_replay_pd_and_device_are_lossless(q4_1_package, tmp_path):
    from pdlink.bench.replay_tokens import read_tokens
    from pdlink.bench.trace_replay import run_trace_replays
    from pdlink.traces.report import TraceBenchConfig

    out = tmp_path / "results"
    base = dict(output=str(out), trace=str(_trace(tmp_path)), devices=2, device_profile=str(_profile(tmp_path)),
                max_requests=3, max_output_tokens=16, net_rtt_ms=20.0, cloud_threads=1, device_threads=1,
                package=str(q4_1_package))
    reports = run_trace_replays(TraceBenchConfig(**base), ("pd", "device"))  # one server, engines loaded once
    pd, device = reports["pd"], reports["device"]
    assert KEYS <= set(pd) and pd["requests"] == 3 and pd["mode"] == "pd"
    assert [r["output_tokens"] for r in pd["records"]] == [16, 16, 9]
    assert [r["prompt_tokens"] for r in pd["records"]] == [300, 400, 500]
    assert pd["cloud_server"]["backend"] and pd["cloud_busy_s_server"] > 0
    assert device["requests"] == 3 and device["cloud_busy_s_per_request"] == 0.0

    pd_rows, device_rows = read_tokens(out, "pd"), read_tokens(out, "device")
    by_index = {r["index"]: r["token_ids"] for r in device_rows}
    for row in pd_rows:
        if row["fallback"] is None:
            assert row["token_ids"] == by_index[row["index"]], row["index"]
    lossless = json.loads((out / "trace-pd.json").read_text())["lossless"]
    assert lossless == pd["lossless"]
    assert lossless["compared"] == 3 - lossless["excluded_fallback"]
    assert lossless["compared"], f"every pd request fell back, nothing to compare: {[r['fallback'] for r in pd_rows]}"
    assert lossless["lossless"] and lossless["equal"] == lossless["compared"]
    assert (out / "trace.png").is_file()
