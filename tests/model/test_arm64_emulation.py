"""A cross-compiled linux-arm64 package computes the same greedy tokens as the host package.

The arm64 package is linked with aarch64-linux-gnu-g++ and run by the C++ runner
(android_bridge/native/pdlink_run.cc) under qemu-aarch64-static, with the aarch64 TVM runtime from
PyPI's wheels. Missing tools fail the test with the Debian packages to install (`make test` runs
android_bridge/install_cross_tools.sh first). Emulation is slow (~1.2 s per prompt token and
~1.5 s per decoded token with 2 threads): the chat prompt (37 tokens) and 6 tokens take ~50 s.
"""

from __future__ import annotations

import pytest

from tests.conftest import build_cached_package

pytestmark = [pytest.mark.model, pytest.mark.slow]

PROMPT = "What is the capital of France?"
NUM_TOKENS = 6  # "The capital of France is Paris"


@pytest.fixture(scope="module")
def host_reference(q4_1_package):
    """The chat prompt's ids and the Python engine's greedy tokens on the host package."""
    from pdlink.edge.engine import Engine, EngineConfig
    from tests.conftest import device_answer

    engine = Engine(EngineConfig(package=str(q4_1_package), num_threads=2, max_num_sequences=1))
    ids = engine.tokenizer.encode_chat(PROMPT)
    tokens = device_answer(engine, ids, NUM_TOKENS, ignore_eos=True).token_ids
    return ids, tokens


def _qemu_runner():
    from pdlink.android_bridge import qemu_runner

    missing = None
    try:
        qemu_runner.require_cross_tools()
    except qemu_runner.CrossToolsMissing as exc:
        missing = str(exc)
    if missing:  # a failure, not a skip: `make test` installs the tools
        pytest.fail(missing, pytrace=False)
    return qemu_runner


def test_native_runner_matches_the_engine_on_host(q4_1_package, host_reference):
    """The C++ runner itself (built with g++ against this venv's TVM) agrees with the Python engine."""
    from pdlink.android_bridge import qemu_runner

    ids, expected = host_reference
    result = qemu_runner.run_host(q4_1_package, ids, NUM_TOKENS, num_threads=2)
    assert result.tokens == expected
    assert result.prompt_tokens == len(ids)


def test_arm64_gemv_kernels_are_vectorised():
    """The decode GEMV kernels of the arm64 package run on NEON: vector multiply-accumulates and int ->
    float converts, and (almost) no scalar floating point, which is what a scalar fallback loop is made of.
    The SwiGLU kernels keep a few scalar ops for ``silu`` per output; a regression to scalar code would
    turn hundreds of ``fmla``s into ``fmadd``s."""
    from pdlink.bench.instruction_mix import DisassemblerMissing, package_instruction_mix
    from pdlink.compile.gemv_words import kernel_path
    from pdlink.compile.target import get_target_preset

    assert kernel_path(get_target_preset("linux-arm64").tvm_target()) == "neon"
    try:
        mix = package_instruction_mix(build_cached_package("q4_1", target="linux-arm64"))
    except DisassemblerMissing as exc:  # a failure, not a skip: `make test` installs the tools
        pytest.fail(str(exc), pytrace=False)
    word_gemvs = {name: m for name, m in mix.items() if m["vector_convert"] > 0}
    assert word_gemvs, f"no matmul kernel converts packed values in vector registers: {sorted(mix)}"
    for name, m in word_gemvs.items():
        assert m["vector_fma"] + m["vector_fp"] >= m["vector_convert"] > 0, (name, m)  # an fma per converted vector
        assert m["scalar_fp"] * 10 <= m["vector_fma"], f"{name} looks scalar: {m}"
    names = " ".join(word_gemvs)
    assert "swiglu" in names and "lm_head" in names, f"GEMV kernels found: {names}"


def test_arm64_package_under_qemu_matches_host(q4_1_package, host_reference):
    qemu_runner = _qemu_runner()
    ids, expected = host_reference
    arm64_package = build_cached_package("q4_1", target="linux-arm64")
    result = qemu_runner.run_arm64(arm64_package, ids, NUM_TOKENS, num_threads=2, timeout_s=600)
    print(f"arm64 under qemu: prefill {result.prefill_s:.1f} s ({len(ids)} tokens), "
          f"decode {result.decode_s:.1f} s ({NUM_TOKENS - 1} tokens), wall {result.wall_s:.1f} s")
    assert result.tokens == expected, (
        f"arm64 tokens {result.tokens} differ from host {expected} (top-2 logit gaps {result.top2_gaps})"
    )
