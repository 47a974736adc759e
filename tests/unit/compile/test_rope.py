"""pdlink's split + RoPE kernel gives exactly the outputs of TVM's ``llama_rope_with_position_map``."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map

from pdlink.compile.rope import split_rotary_cpu

H_Q, H_KV, D, THETA = 9, 3, 64, 100000.0  # SmolLM2-135M


def _build(func):
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]


@pytest.fixture(scope="module")
def kernels():
    args = (THETA, 1.0, D, H_Q, H_KV, "float32", {})
    return _build(split_rotary_cpu(*args)), _build(llama_rope_with_position_map(*args))


def _run(kernel, qkv, positions, apply_rope):
    n = qkv.shape[0]
    outs = [tvm.runtime.tensor(np.full((n, h, D), np.nan, np.float32)) for h in (H_Q, H_KV, H_KV)]
    kernel(tvm.runtime.tensor(qkv), tvm.runtime.tensor(positions), *outs, apply_rope)
    return [o.numpy() for o in outs]


@pytest.mark.parametrize("n", [1, 3, 37])
@pytest.mark.parametrize("apply_rope", [0, 1])
def test_bit_identical_to_tvm(kernels, n, apply_rope):
    rng = np.random.default_rng(n)
    qkv = rng.standard_normal((n, H_Q + 2 * H_KV, D)).astype(np.float32)
    positions = rng.integers(0, 8192, n).astype(np.int32)
    for ours, theirs in zip(_run(kernels[0], qkv, positions, apply_rope), _run(kernels[1], qkv, positions, apply_rope)):
        np.testing.assert_array_equal(ours, theirs)


def test_other_rope_kinds_keep_tvm_kernel():
    func = split_rotary_cpu(THETA, 1.0, D, H_Q, H_KV, "float32", {"rope_type": "gptj"})
    assert "llama_fused_rope" in func.script()
