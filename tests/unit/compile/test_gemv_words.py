"""The decode GEMV of ``gemv_words`` computes ``x @ W.T`` of the stored blocks (AVX-512 hosts)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from pdlink.compile.gemv_words import supports_word_gemv, word_gemv
from pdlink.compile.target import get_target_preset
from pdlink.compile.weight_format import WEIGHT_FORMATS

TARGET = get_target_preset("host").tvm_target()
pytestmark = pytest.mark.skipif(not supports_word_gemv("q4_1", 64, TARGET), reason="needs an x86-64 CPU with AVX-512")


@pytest.mark.parametrize("fmt_name", ["q4_1", "q4sym_f16", "q4sym_f32", "q8_0"])
@pytest.mark.parametrize("n_out, n_in", [(96, 576), (40, 1536), (33, 544), (8, 32), (5, 96)])
def test_matches_numpy_on_the_decoded_weights(fmt_name, n_out, n_in):
    """Shapes cover rows of 16-, 8- and 4-word chunks and a last, partial tile of rows."""
    fmt = WEIGHT_FORMATS[fmt_name]
    rng = np.random.default_rng(n_out * n_in)
    arrays = fmt.from_float(rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.05)
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    scale_dtype = fmt.array_specs(n_out, n_in)["scale"][1]
    func = word_gemv(fmt_name, n_in, n_out, scale_dtype).with_attr("global_symbol", "main")
    kernel = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)["main"]
    inputs = [x] + [arrays[s] for s in ("q", "scale", "min") if s in arrays]
    out = tvm.runtime.tensor(np.full((1, n_out), np.nan, np.float32))
    kernel(*[tvm.runtime.tensor(a) for a in inputs], out)
    expected = x.astype(np.float64) @ fmt.to_float(arrays).astype(np.float64).T
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_only_block_formats_on_avx512_x86():
    assert not supports_word_gemv("f16", 576, TARGET)
    assert not supports_word_gemv("q4_1", 48, TARGET)
    arm = get_target_preset("linux-arm64").tvm_target()
    assert not supports_word_gemv("q4_1", 576, arm)


@pytest.mark.parametrize("fmt_name", ["q4_1", "q8_0"])
def test_swiglu_epilogue(fmt_name):
    """``silu(gate) * up`` of the two halves of the output, as the MLP computes it."""
    fmt = WEIGHT_FORMATS[fmt_name]
    n_out, n_in = 96, 576
    rng = np.random.default_rng(7)
    arrays = fmt.from_float(rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.05)
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    func = word_gemv(fmt_name, n_in, n_out, "float16", swiglu=True).with_attr("global_symbol", "main")
    kernel = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)["main"]
    out = tvm.runtime.tensor(np.full((1, n_out // 2), np.nan, np.float32))
    kernel(*[tvm.runtime.tensor(a) for a in [x] + [arrays[s] for s in ("q", "scale", "min") if s in arrays]], out)
    gate, up = np.split(x.astype(np.float64) @ fmt.to_float(arrays).astype(np.float64).T, 2, axis=1)
    np.testing.assert_allclose(out.numpy(), gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-5)
