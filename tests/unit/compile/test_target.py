import pytest

from pdlink.compile.quantization import QUANTIZATIONS, get_quantization
from pdlink.compile.target import get_target_preset, target_presets

EXPECTED = {"host", "linux-arm64", "android-arm64", "android-arm64-opencl", "ios-arm64", "macos-arm64", "cuda"}


def test_every_preset_is_in_the_table_and_makes_a_tvm_target():
    presets = target_presets()
    assert EXPECTED <= set(presets)
    for preset in presets.values():
        target = preset.tvm_target()
        assert target.kind.name == (preset.device["kind"] if preset.device else "llvm")
        assert preset.lib_format in ("so", "tar")


def test_only_host_is_runnable_here():
    assert [p.name for p in target_presets().values() if p.runnable_here] == ["host"]


def test_unknown_target_and_quantization_name_the_choices():
    with pytest.raises(ValueError, match="choose one of: host"):
        get_target_preset("pdp11")
    with pytest.raises(ValueError, match="q4_1"):
        get_quantization("q3")


def test_quantization_modes():
    assert set(QUANTIZATIONS) == {"f32", "f16", "q4f16", "q4f32", "q4_1"}
    assert get_quantization("q4_1").embedding == "q8_0"
