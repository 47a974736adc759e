"""Corrections learnt per device and cloud (pdlink.edge.corrections) and the numerics oracle (common.numerics)."""

from __future__ import annotations

import pytest

from pdlink.common.numerics import DIFFERENT, EQUAL, compare_numerics
from pdlink.common.protocol import Numerics, Welcome, decode_server, encode
from pdlink.edge.corrections import Correction, CorrectionStore
from pdlink.edge.session_settings import CloudEstimate


def test_a_correction_is_learnt_stored_and_applied(tmp_path):
    store = CorrectionStore(tmp_path / "c.json")
    assert store.get("phone", "ws://x") == Correction()
    first = store.get("phone", "ws://x").learn(ttft_ratio=4.0, tpot_ratio=2.0)
    store.put("phone", "ws://x", first)
    again = store.get("phone", "ws://x")
    assert again == first == Correction(4.0, 2.0, 1)
    # the next ratio is measured against the corrected estimate: 1.0 means the correction was right
    assert again.learn(1.0, 1.0) == Correction(4.0, 2.0, 2)
    assert again.learn(0.5, None).cloud_ttft == pytest.approx(0.5 * 4.0 + 0.5 * 2.0)
    cloud = again.apply(CloudEstimate(prefill_tok_s=2000.0, tpot_s=0.02, rtt_s=0.0))
    assert cloud.prefill_tok_s == 500.0 and cloud.tpot_s == pytest.approx(0.04)
    assert store.get("laptop", "ws://x") == Correction()  # per device and cloud
    (tmp_path / "c.json").write_text("{broken")
    assert store.get("phone", "ws://x") == Correction()


def test_numerics_equal_only_for_the_same_package_or_the_float32_reference():
    package = Numerics(checkpoint="m", weights="q4_1", kv_dtype="float16", backend="package", config_hash="abc")
    assert compare_numerics(package, package)[0] == EQUAL
    f32 = Numerics(checkpoint="m", weights="f32", kv_dtype="float32", backend="package", config_hash="f")
    torch = Numerics(checkpoint="m", weights="f32", kv_dtype="float32", backend="torch")
    assert compare_numerics(f32, torch)[0] == EQUAL
    verdict, why = compare_numerics(package, torch)
    assert verdict == DIFFERENT and "q4_1" in why and "float16" in why
    f32_f16kv = Numerics(checkpoint="m", weights="f32", kv_dtype="float16", backend="package", config_hash="g")
    assert compare_numerics(f32_f16kv, torch)[0] == DIFFERENT
    assert compare_numerics(f32, None)[0] == DIFFERENT  # an older server says nothing


def test_welcome_carries_numerics_and_old_welcomes_still_decode():
    w = Welcome(protocol_version=1, server="s", model_id="m", tokenizer_hash="h",
                numerics=Numerics(weights="f32", kv_dtype="float32", backend="torch"))
    assert decode_server(encode(w)).numerics.kv_dtype == "float32"
    old = '{"type":"welcome","protocol_version":1,"server":"s","model_id":"m","tokenizer_hash":"h"}'
    assert decode_server(old).numerics is None
