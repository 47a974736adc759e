"""pdlink's CPU attention kernels give the same output and lse as TVM's built-in ones.

Both are compiled for this machine and run on the same random inputs, with the paged KV cache laid
out by hand the way the runtime does it: ``pages[num_pages, 2 (k, v), h_kv, page_size, d]``, each
sequence a list of page ids, the last page filled to ``length_info[seq]`` rows. Page slots no
sequence uses hold NaN, so a kernel reading past a sequence's keys fails the comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm.relax.frontend.nn.llm import kv_cache as kv

from pdlink.compile import attention

H_KV, H_Q, D, PAGE = 3, 9, 64, 16  # SmolLM2-135M's attention
SM_SCALE = 1 / math.sqrt(D)
ROPE = (1.0, 10000.0)  # rope_scale, rope_theta
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _build(func):
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]


@pytest.fixture(scope="module")
def kernels():
    """kind -> (pdlink's kernel, TVM's built-in kernel), compiled."""
    pairs = {
        "ragged": (attention.attention_prefill_ragged_cpu(H_KV, H_Q, D, D, "float32", {}), kv._attention_prefill_ragged_cpu(H_KV, H_Q, D, D, "float32", {})),
        "prefill": (attention.attention_prefill_cpu(H_KV, H_Q, D, "float32", False, {}), kv._attention_prefill_cpu(H_KV, H_Q, D, "float32", False, {})),
        "decode": (attention.attention_decode_cpu(H_KV, H_Q, D, "float32", False, {}), kv._attention_decode_cpu(H_KV, H_Q, D, "float32", False, {})),
        "merge": (attention.merge_state_inplace_cpu("float32"), kv._merge_state_inplace_cpu("float32")),
    }
    return {kind: (_build(ours), _build(builtin)) for kind, (ours, builtin) in pairs.items()}


def _run(kernel, inputs, out_shapes, scalars=()):
    """Call ``kernel(*inputs, *outputs, *scalars)``; returns the outputs as numpy arrays."""
    outs = [tvm.runtime.tensor(np.zeros(shape, "float32")) for shape in out_shapes]
    kernel(*[tvm.runtime.tensor(np.asarray(a)) for a in inputs], *outs, *scalars)
    return [o.numpy() for o in outs]


def _compare(kernels, kind, inputs, out_shapes, scalars=()):
    ours, builtin = kernels[kind]
    for got, want in zip(_run(ours, inputs, out_shapes, scalars), _run(builtin, inputs, out_shapes, scalars)):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, **TOL)


def _indptr(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype("int32")


def _paged_cache(kv_lens, rng):
    """(pages, page_indptr, page_values, last_page_len) holding ``kv_lens[i]`` random keys for sequence i."""
    n_pages = [math.ceil(n / PAGE) for n in kv_lens]
    total = sum(n_pages) + 2  # two pages no sequence uses
    pages = np.full((total, 2, H_KV, PAGE, D), np.nan, "float32")
    ids = rng.permutation(total)[: sum(n_pages)].astype("int32")
    for seq, n in enumerate(kv_lens):
        seq_pages = ids[sum(n_pages[:seq]) : sum(n_pages[: seq + 1])]
        for row in range(n):
            pages[seq_pages[row // PAGE], :, :, row % PAGE] = rng.standard_normal((2, H_KV, D))
    last = np.array([n - (p - 1) * PAGE if p else 0 for n, p in zip(kv_lens, n_pages)], "int32")
    return pages, _indptr(n_pages), ids, last


@pytest.mark.parametrize(
    ("q_lens", "causal", "rotary"),
    [([37], 1, 0), ([5, 70], 1, 0), ([50, 17], 1, 1), ([33, 20], 0, 0)],
)
def test_ragged_prefill_matches_builtin(kernels, q_lens, causal, rotary):
    rng = np.random.default_rng(len(q_lens) * 100 + sum(q_lens))
    n = sum(q_lens)
    q = rng.standard_normal((n, H_Q, D)).astype("float32")
    k, v = (rng.standard_normal((n, H_KV, D)).astype("float32") for _ in range(2))
    q_pos = np.concatenate([np.arange(length) + 3 for length in q_lens]).astype("int32")
    k_offset = np.full(len(q_lens), 3, "int32")
    inputs = [q, _indptr(q_lens), k, v, _indptr(q_lens), q_pos, k_offset]
    _compare(kernels, "ragged", inputs, [(n, H_Q, D), (n, H_Q)], (causal, rotary, *ROPE, SM_SCALE))


@pytest.mark.parametrize(
    ("prefix_lens", "q_lens", "causal", "rotary"),
    [([37], [9], 0, 0), ([37, 0, 20], [9, 4, 3], 0, 0), ([70, 21], [5, 40], 0, 1), ([45, 33], [7, 2], 1, 0)],
)
def test_paged_prefill_matches_builtin(kernels, prefix_lens, q_lens, causal, rotary):
    """New tokens attending to a cached prefix (chunked prefill, appended tokens), one empty."""
    rng = np.random.default_rng(sum(prefix_lens) + sum(q_lens))
    pages, page_indptr, page_values, last = _paged_cache(prefix_lens, rng)
    n = sum(q_lens)
    q = rng.standard_normal((n, H_Q, D)).astype("float32")
    q_pos = np.concatenate([np.arange(q_len) + p for q_len, p in zip(q_lens, prefix_lens)]).astype("int32")
    k_offset = np.zeros(len(q_lens), "int32")
    inputs = [q, _indptr(q_lens), pages, page_indptr, page_values, last, k_offset, q_pos]
    _compare(kernels, "prefill", inputs, [(n, H_Q, D), (n, H_Q)], (causal, rotary, *ROPE, SM_SCALE))


@pytest.mark.parametrize(("kv_lens", "rotary"), [([37, 70], 0), ([16, 5], 1), ([600, 37], 0), ([0, 20], 0)])
def test_decode_matches_builtin(kernels, kv_lens, rotary):
    """A batch of two; 600 keys span several work items (chunks of pages); 0 keys: empty output."""
    rng = np.random.default_rng(sum(kv_lens))
    pages, page_indptr, page_values, last = _paged_cache(kv_lens, rng)
    b = len(kv_lens)
    q = rng.standard_normal((b, H_Q, D)).astype("float32")
    q_pos = (np.array(kv_lens) - 1).astype("int32")
    inputs = [q, pages, page_indptr, page_values, last, np.zeros(b, "int32"), q_pos]
    _compare(kernels, "decode", inputs, [(b, H_Q, D), (b, H_Q)], (rotary, *ROPE, SM_SCALE))


def test_merge_state_matches_builtin(kernels):
    rng = np.random.default_rng(7)
    v, v_other = (rng.standard_normal((11, H_Q, D)).astype("float32") for _ in range(2))
    s, s_other = (rng.uniform(-8, 8, (11, H_Q)).astype("float32") for _ in range(2))
    s_other[0] = -5e4  # an empty state (e.g. a sequence without cached keys) merges as a no-op
    ours, builtin = kernels["merge"]
    results = []
    for kernel in (ours, builtin):
        arrays = [tvm.runtime.tensor(a.copy()) for a in (v, s, v_other, s_other)]
        kernel(*arrays)
        results.append((arrays[0].numpy(), arrays[1].numpy()))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, **TOL)


def test_swap_is_scoped():
    """The factories are replaced only inside ``cpu_attention_kernels()``."""
    before = kv._attention_decode_cpu
    with attention.cpu_attention_kernels():
        assert kv._attention_decode_cpu is attention.attention_decode_cpu
        assert kv._attention_prefill_ragged_cpu is attention.attention_prefill_ragged_cpu
    assert kv._attention_decode_cpu is before
