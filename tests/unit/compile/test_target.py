import pytest

from pdlink.compile.quantization import QUANTIZATIONS, get_quantization
from pdlink.compile.target import get_target_preset, target_presets

EXPECTED = {"host", "x86_64-avx2", "linux-arm64", "android-arm64", "android-arm64-opencl", "ios-arm64", "macos-arm64", "cuda"}


def test_every_preset_is_in_the_table_and_makes_a_tvm_target():
    presets = target_presets()
    assert EXPECTED <= set(presets)
    for preset in presets.values():
        target = preset.tvm_target()
        assert target.kind.name == (preset.device["kind"] if preset.device else "llvm")
        assert preset.lib_format in ("so", "tar")


def test_only_host_and_the_x86_presets_this_cpu_fits_are_runnable_here():
    from pdlink.common.package import host_arch, host_cpu_features

    runnable = [p.name for p in target_presets().values() if p.runnable_here]
    avx2_here = host_arch() == "x86_64" and "avx2" in host_cpu_features()
    assert runnable == (["host", "x86_64-avx2"] if avx2_here else ["host"])


def test_the_avx2_preset_needs_avx2_and_no_avx512():
    from tvm.target import codegen

    preset = get_target_preset("x86_64-avx2")
    target = preset.tvm_target()
    assert codegen.target_has_features("avx2", target) and codegen.target_has_features("fma", target)
    assert not codegen.target_has_features("avx512f", target)
    assert set(preset.cpu_features) == {"avx", "avx2", "fma", "f16c"} and preset.lib_format == "so"


def test_unknown_target_and_quantization_name_the_choices():
    with pytest.raises(ValueError, match="choose one of: host"):
        get_target_preset("pdp11")
    with pytest.raises(ValueError, match="q4_1"):
        get_quantization("q3")


def test_quantization_modes():
    assert set(QUANTIZATIONS) == {"f32", "f16", "q4f16", "q4f32", "q4_1"}
    assert get_quantization("q4_1").embedding == "q8_0"
