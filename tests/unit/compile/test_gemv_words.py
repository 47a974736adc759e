"""The decode GEMV of ``gemv_words`` computes ``x @ W.T`` of the stored blocks on every kernel path this
CPU can run (AVX-512, AVX2), and agrees with the generic te GEMV; NEON is checked by the arm64 emulation
and disassembly tests (tests/model/test_arm64_emulation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from pdlink.common.package import host_arch, host_cpu_features
from pdlink.compile import formatted_matrix
from pdlink.compile.gemv_words import kernel_path, supports_word_gemv, word_gemv
from pdlink.compile.schedule import schedule_matmul_nt
from pdlink.compile.target import get_target_preset
from pdlink.compile.weight_format import WEIGHT_FORMATS

X86_TARGETS = {  # kernel path -> (target, cpuinfo flag this CPU needs to run it)
    "avx512": ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, "avx512f"),
    "avx2": (get_target_preset("x86_64-avx2").host, "avx2"),
}
GENERIC_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}
FORMATS = ["q4_1", "q4sym_f16", "q4sym_f32", "q8_0"]


def _path(name: str):
    target, flag = X86_TARGETS[name]
    runs = host_arch() == "x86_64" and flag in host_cpu_features()
    return pytest.param(name, marks=pytest.mark.skipif(not runs, reason=f"this CPU has no {flag} to run the {name} path"))


PATHS = [_path(name) for name in X86_TARGETS]


def _target(path: str):
    return tvm.target.Target(X86_TARGETS[path][0])


def _run(func, target, inputs, out_shape):
    kernel = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32))
    kernel(*[tvm.runtime.tensor(a) for a in inputs], out)
    return out.numpy()


def _random_matrix(fmt_name: str, n_out: int, n_in: int, seed: int):
    fmt = WEIGHT_FORMATS[fmt_name]
    rng = np.random.default_rng(seed)
    arrays = fmt.from_float(rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.05)
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    return fmt, arrays, x, [x] + [arrays[s] for s in ("q", "scale", "min") if s in arrays]


def _generic_gemv(fmt, n_in: int, n_out: int):
    """The te GEMV that targets without a word path get, scheduled as in a package."""
    specs = fmt.array_specs(n_out, n_in)
    x = te.placeholder((1, n_in), "float32", name="x")
    arrays = [te.placeholder(shape, dtype, name=suffix) for suffix, (shape, dtype) in specs.items()]
    named = {s: formatted_matrix._widened_block_params(a, n_in) for s, a in zip(specs, arrays)}
    out = formatted_matrix._gemv(x, lambda o, k: fmt.element(named, o, k), n_in, n_out)
    func = te.create_prim_func([x, *arrays, out])
    return schedule_matmul_nt.apply(func, tvm.target.Target(GENERIC_TARGET), False).mod["main"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("n_out, n_in", [(96, 576), (40, 1536), (33, 544), (8, 32), (5, 96)])
def test_matches_numpy_on_the_decoded_weights(path, fmt_name, n_out, n_in):
    """Shapes cover rows of 16-, 8- and 4-word chunks and a last, partial tile of rows."""
    fmt, arrays, x, inputs = _random_matrix(fmt_name, n_out, n_in, seed=n_out * n_in)
    scale_dtype = fmt.array_specs(n_out, n_in)["scale"][1]
    out = _run(word_gemv(fmt_name, n_in, n_out, scale_dtype, path=path), _target(path), inputs, (1, n_out))
    expected = x.astype(np.float64) @ fmt.to_float(arrays).astype(np.float64).T
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt_name", FORMATS)
def test_agrees_with_the_generic_kernel_on_random_blocks(path, fmt_name):
    n_out, n_in = 72, 608  # 608 = 19 blocks: every chunk width and an odd number of blocks
    fmt, _, _, inputs = _random_matrix(fmt_name, n_out, n_in, seed=11)
    scale_dtype = fmt.array_specs(n_out, n_in)["scale"][1]
    words = _run(word_gemv(fmt_name, n_in, n_out, scale_dtype, path=path), _target(path), inputs, (1, n_out))
    generic = _run(_generic_gemv(fmt, n_in, n_out), tvm.target.Target(GENERIC_TARGET), inputs, (1, n_out))
    np.testing.assert_allclose(words, generic, rtol=1e-5, atol=1e-5)


def test_kernel_path_follows_the_target_features():
    assert kernel_path(_target_of(X86_TARGETS["avx512"][0])) == "avx512"
    assert kernel_path(get_target_preset("x86_64-avx2").tvm_target()) == "avx2"
    assert kernel_path(_target_of(GENERIC_TARGET)) == "generic"
    for name in ("linux-arm64", "android-arm64", "macos-arm64"):
        assert kernel_path(get_target_preset(name).tvm_target()) == "neon"
    assert kernel_path(None) == "generic"


def _target_of(target_json: dict):
    return tvm.target.Target(target_json)


def test_only_block_formats_on_vector_targets():
    avx2 = get_target_preset("x86_64-avx2").tvm_target()
    assert supports_word_gemv("q4_1", 576, avx2)
    assert not supports_word_gemv("f16", 576, avx2)
    assert not supports_word_gemv("q4_1", 48, avx2)
    assert not supports_word_gemv("q4_1", 576, _target_of(GENERIC_TARGET))
    assert supports_word_gemv("q8_0", 576, get_target_preset("linux-arm64").tvm_target())
    with pytest.raises(ValueError, match="avx2"):
        word_gemv("q4_1", 64, 8, "float16", path="sse2")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt_name", ["q4_1", "q8_0"])
def test_swiglu_epilogue(path, fmt_name):
    """``silu(gate) * up`` of the two halves of the output, as the MLP computes it."""
    n_out, n_in = 96, 576
    fmt, arrays, x, inputs = _random_matrix(fmt_name, n_out, n_in, seed=7)
    func = word_gemv(fmt_name, n_in, n_out, "float16", swiglu=True, path=path)
    out = _run(func, _target(path), inputs, (1, n_out // 2))
    gate, up = np.split(x.astype(np.float64) @ fmt.to_float(arrays).astype(np.float64).T, 2, axis=1)
    np.testing.assert_allclose(out, gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-5)
