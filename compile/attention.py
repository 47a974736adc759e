"""Fast CPU attention kernels for TVM's paged KV cache, and the switch that puts them in.

For ``llvm`` targets ``TIRPagedKVCache`` registers four serial, scalar TIR kernels: ragged prefill
(new tokens over themselves, causal), paged prefill (new tokens over the cached pages: chunked
prefill, appended tokens), paged decode, and the merge of two attention states. pdlink replaces
them with kernels of the same signatures and semantics (output, and ``lse`` in log2 units), in

* :mod:`pdlink.compile.attention_prefill` and :mod:`pdlink.compile.attention_decode`, built from
* :mod:`pdlink.compile.attention_core`: the online-softmax block, the tile macros, the paged KV
  cache arguments, ``exp2``;

and the merge below. What makes them fast:

* ``T.parallel`` over independent work items: (kv head, tile of query positions) for prefill,
  (sequence, chunk of pages) for decode, (row, head) for the merge;
* GQA sharing: the ``G = h_q // h_kv`` query heads of a kv head are computed together, so each
  key/value row is read once per tile instead of once per query head;
* flash-attention style online softmax over blocks of keys (nothing quadratic is materialized);
* vectorized inner loops with register blocking, and a polynomial ``exp2`` that vectorizes
  (``T.exp2`` becomes one libm call per vector lane);
* RoPE (``rotary_mode == 1``) applied once per loaded query/key row, not per (query, key) pair.

Sliding-window variants, and head sizes that are not a multiple of 16, stay on the built-in
kernels. The split of the fused QKV rows with RoPE (``tir_split_rotary``) is replaced too, by
:mod:`pdlink.compile.rope`. :func:`cpu_attention_kernels` puts the factories in place while the KV
cache is created.
"""

from __future__ import annotations

import contextlib

from tvm.relax.frontend.nn.llm import kv_cache as _kv
from tvm.script import tirx as T

from pdlink.compile.attention_decode import attention_decode_cpu
from pdlink.compile.attention_prefill import attention_prefill_cpu, attention_prefill_ragged_cpu
from pdlink.compile.rope import split_rotary_cpu

__all__ = ["attention_decode_cpu", "attention_prefill_cpu", "attention_prefill_ragged_cpu", "cpu_attention_kernels", "merge_state_inplace_cpu"]


def merge_state_inplace_cpu(v_dtype):
    """``v, s <- merge((v, s), (v_other, s_other))`` of two attention states; for ``_merge_state_inplace_cpu``."""

    @T.prim_func(s_tir=True)
    def merge_state_inplace_cpu(v: T.handle, s: T.handle, v_other: T.handle, s_other: T.handle):
        T.func_attr({"tirx.is_scheduled": True})
        N, H, D = T.int32(), T.int32(), T.int32()
        V = T.match_buffer(v, (N, H, D), v_dtype)
        S = T.match_buffer(s, (N, H), "float32")
        V_other = T.match_buffer(v_other, (N, H, D), v_dtype)
        S_other = T.match_buffer(s_other, (N, H), "float32")
        for p in T.parallel(N * H):
            with T.sblock("merge"):
                T.reads()
                T.writes()
                n: T.let[T.int32] = p // H
                h: T.let[T.int32] = p % H
                s_max: T.let[T.float32] = T.max(S[n, h], S_other[n, h])
                w: T.let[T.float32] = T.exp2(S[n, h] - s_max)
                w_other: T.let[T.float32] = T.exp2(S_other[n, h] - s_max)
                for d in T.serial(D):
                    merged = V[n, h, d].astype("float32") * (w / (w + w_other)) + V_other[n, h, d].astype("float32") * (w_other / (w + w_other))
                    V[n, h, d] = merged.astype(v_dtype)
                S[n, h] = T.log2(w + w_other) + s_max

    return merge_state_inplace_cpu


@contextlib.contextmanager
def cpu_attention_kernels():
    """Within the block, ``TIRPagedKVCache`` builds its CPU attention with the kernels of this module.

    ``TIRPagedKVCache.__init__`` looks its kernel factories up as globals of
    ``tvm.relax.frontend.nn.llm.kv_cache`` when it runs, so they are swapped there for the
    duration of the block and restored afterwards (also on error). Only the ``llvm`` branch uses
    the four attention names; the RoPE factory is shared with GPU branches, so enter the block
    for ``llvm`` targets only.
    """
    swaps = {
        "_attention_prefill_ragged_cpu": attention_prefill_ragged_cpu,
        "_attention_prefill_cpu": attention_prefill_cpu,
        "_attention_decode_cpu": attention_decode_cpu,
        "_merge_state_inplace_cpu": merge_state_inplace_cpu,
        "llama_rope_with_position_map": split_rotary_cpu,
    }
    saved = {name: getattr(_kv, name) for name in swaps}
    try:
        for name, factory in swaps.items():
            setattr(_kv, name, factory)
        yield
    finally:
        for name, factory in saved.items():
            setattr(_kv, name, factory)
