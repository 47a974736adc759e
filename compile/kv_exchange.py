"""The KV cache's per-sequence read-out kernel, made an exchange so the runtime can both export and import KV.

``TIRPagedKVCache`` takes a ``kv_cache_debug_get_kv`` kernel ``(pages, position_map, k_data, v_data,
layer_id)``, called by the builtin ``vm.builtin.attention_kv_cache_debug_get_kv(kv, seq, start, end, k, v)``
once per layer with the cache positions of the sequence's tokens. TVM has no builtin that writes a
sequence's KV, so pdlink compiles this kernel in its place: it *swaps* ``k_data/v_data[layer]`` with the
sequence's cached rows. The engine exports with two swaps (the second puts the cache back) and imports
with one, into a sequence whose pages were just reserved by ``begin_forward``. Pure data movement: the
cache holds K after RoPE, so the rows are copied exactly (``edge/engine.py``: ``export_kv``/``import_kv``).
"""

from __future__ import annotations

import contextlib

from tvm.relax.frontend.nn.llm import kv_cache as _kv
from tvm.script import tirx as T

from pdlink.common.package import KV_IO  # noqa: F401  (what the builder records for this kernel)


def kv_cache_exchange(num_hidden_layers: int, num_key_value_heads: int, head_dim: int, dtype: str):
    """``k_data[layer], v_data[layer] <-> pages[rows of the sequence]``, in parallel over tokens."""

    @T.prim_func(s_tir=True)
    def kv_cache_exchange(var_pages: T.handle, var_position_map: T.handle, var_k_data: T.handle,
                          var_v_data: T.handle, layer_id: T.int64):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seqlen = T.int64()
        page_size = T.int64()
        num_pages = T.int64()
        pages_elem_offset = T.int64()
        position_map_elem_offset = T.int64()
        pages = T.match_buffer(var_pages, (num_pages, 2, num_key_value_heads, page_size, head_dim), dtype,
                               elem_offset=pages_elem_offset)
        position_map = T.match_buffer(var_position_map, (seqlen,), "int32", elem_offset=position_map_elem_offset)
        k_data = T.match_buffer(var_k_data, (num_hidden_layers, seqlen, num_key_value_heads, head_dim), dtype)
        v_data = T.match_buffer(var_v_data, (num_hidden_layers, seqlen, num_key_value_heads, head_dim), dtype)
        for p in T.parallel(seqlen):
            with T.sblock("swap_token"):
                T.reads()
                T.writes()
                old = T.sblock_alloc_buffer((2,), dtype)
                page: T.let[T.int64] = T.Cast("int64", position_map[p]) // page_size
                slot: T.let[T.int64] = T.Cast("int64", position_map[p]) % page_size
                for h in T.serial(num_key_value_heads):
                    for d in T.serial(head_dim):
                        old[0] = pages[page, 0, h, slot, d]
                        old[1] = pages[page, 1, h, slot, d]
                        pages[page, 0, h, slot, d] = k_data[layer_id, p, h, d]
                        pages[page, 1, h, slot, d] = v_data[layer_id, p, h, d]
                        k_data[layer_id, p, h, d] = old[0]
                        v_data[layer_id, p, h, d] = old[1]

    return kv_cache_exchange


@contextlib.contextmanager
def kv_exchange_kernel():
    """Within the block, ``TIRPagedKVCache`` gets :func:`kv_cache_exchange` as its ``debug_get_kv`` kernel
    (looked up as a global of ``tvm.relax.frontend.nn.llm.kv_cache`` while the cache is created)."""
    saved = _kv._kv_cache_debug_get_kv  # noqa: SLF001
    _kv._kv_cache_debug_get_kv = kv_cache_exchange  # noqa: SLF001
    try:
        yield
    finally:
        _kv._kv_cache_debug_get_kv = saved  # noqa: SLF001
