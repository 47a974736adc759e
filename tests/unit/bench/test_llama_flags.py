"""llama.cpp's build flags follow the CPU's features (never AVX-512 where it is missing, AMX always off),
and a crashed benchmark worker is reported with its signal and likely cause."""

from __future__ import annotations

import signal

import pytest

from pdlink.bench.engine import _ratios
from pdlink.bench.llama_flags import cpu_flags, llama_cmake_args
from pdlink.bench.worker_failure import describe_failure

XEON_AMX = ("flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi "
            "avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8 amx_bf16\n")
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 sha_ni\n"
ARM_DOTPROD = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 fphp asimdhp asimddp\n"
ARM_BASE = "Features\t: fp asimd evtstrm crc32\n"


def _options(text: str, isa: str = "native") -> dict[str, str]:
    args = llama_cmake_args(*cpu_flags(text), isa=isa)
    return dict(a[2:].split("=", 1) for a in args)


def test_avx512_xeon_gets_avx512_but_never_amx():
    opts = _options(XEON_AMX)
    assert opts["GGML_NATIVE"] == "OFF"
    assert all(opts[k] == "ON" for k in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"))
    assert all(opts[k] == "OFF" for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"))


def test_avx2_only_epyc_gets_no_avx512_flag():
    opts = _options(EPYC_AVX2)
    assert all(opts[k] == "ON" for k in ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"))
    assert [k for k, v in opts.items() if "AVX512" in k and v != "OFF"] == []
    assert opts["GGML_AVX_VNNI"] == "OFF" and opts["GGML_NATIVE"] == "OFF"


def test_the_avx2_cap_turns_avx512_off_on_an_avx512_cpu():
    opts = _options(XEON_AMX, isa="avx2")
    assert opts["GGML_AVX2"] == "ON"
    assert [k for k, v in opts.items() if v == "ON"] == [
        "GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"]


def test_avx512_needs_all_five_subsets():
    partial = XEON_AMX.replace(" avx512bw", "")
    assert _options(partial)["GGML_AVX512"] == "OFF"


def test_arm_gets_an_march_with_the_extensions_it_has():
    assert _options(ARM_DOTPROD)["GGML_CPU_ARM_ARCH"] == "armv8.2-a+dotprod+fp16"
    assert _options(ARM_BASE)["GGML_CPU_ARM_ARCH"] == "armv8-a"
    assert not any(k.startswith("GGML_AVX") for k in _options(ARM_DOTPROD))


def test_unreadable_cpuinfo_and_unknown_choices_say_what_to_do():
    with pytest.raises(ValueError, match="--cpuinfo"):
        cpu_flags("processor: 0\n")
    with pytest.raises(ValueError, match="native"):
        llama_cmake_args("x86_64", {"avx2"}, isa="sse")
    with pytest.raises(ValueError, match="x86_64 and aarch64"):
        llama_cmake_args("riscv64", set())


def test_a_sigill_names_the_signal_the_cause_and_the_fix():
    failure = describe_failure(-signal.SIGILL, "loading model\n")
    assert failure["signal"] == "SIGILL"
    assert "illegal instruction" in failure["error"] and "make bench-deps" in failure["error"]
    assert describe_failure(-signal.SIGKILL, "")["likely_cause"].startswith("killed from outside")


def test_a_plain_exit_keeps_the_last_line_of_stderr():
    failure = describe_failure(1, "Traceback ...\nValueError: no model\n")
    assert failure["signal"] is None and failure["error"].endswith("ValueError: no model")


def test_null_ratios_say_why():
    ok = {"decode": {"median_tok_s": 100.0}, "prefill": {"512": {"median_tok_s": 300.0}}, "rss_mib": {"peak": 300.0}}
    results = {"pdlink-q4_1": dict(ok), "llama.cpp": describe_failure(-signal.SIGILL, "")}
    ratios, why = _ratios(results, {"transformers": "transformers is not installed"})
    assert ratios["decode_ratio_q4_vs_llamacpp"] is None
    assert "SIGILL" in why["decode_ratio_q4_vs_llamacpp"]
    assert "not installed" in why["prefill_ratio_f32_vs_transformers"]
    results["llama.cpp"] = {**ok, "decode": {"median_tok_s": 50.0}}
    ratios, why = _ratios(results, {})
    assert ratios["decode_ratio_q4_vs_llamacpp"] == 2.0 and "decode_ratio_q4_vs_llamacpp" not in why
