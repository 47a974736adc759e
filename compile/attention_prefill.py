"""Prefill attention kernels for CPUs: new tokens over themselves (ragged) or over cached pages.

Work items are (kv head, tile of ``tile_positions(G)`` query positions of one sequence); a tile
holds the query rows of all ``G`` query heads of its kv head, so every key/value row is loaded once
per tile. Keys stream through in blocks of ``BK`` rows (copied, with RoPE when ``rotary_mode == 1``,
into ``kb``/``vb``) folded into an online softmax by :func:`make_prefill_core`.
"""

from __future__ import annotations

from typing import Any

from tvm.relax.frontend.nn.llm import _prefill_kernels
from tvm.relax.frontend.nn.llm._kernel_common import _rope
from tvm.script import tirx as T

from pdlink.compile.attention_core import (
    BK, LANES, UNROLL, make_prefill_core, make_tile_macros, match_paged_kv, paged_seq_len, supported, tile_positions,
)


def _alloc_tile(d_qk: int, d_v: int, rows: int):
    """Per-work-item scratch of a prefill tile (see :func:`make_prefill_core` for the layout)."""
    nv = rows // LANES
    f32 = "float32"
    return (
        T.sblock_alloc_buffer((d_qk, nv, LANES), f32),  # qt
        T.sblock_alloc_buffer((BK, d_qk), f32),  # kb
        T.sblock_alloc_buffer((BK, d_v), f32),  # vb
        T.sblock_alloc_buffer((nv, LANES), "int32"),  # lim
        T.sblock_alloc_buffer((nv, LANES), f32),  # m
        T.sblock_alloc_buffer((nv, LANES), f32),  # l
        T.sblock_alloc_buffer((d_v, nv, LANES), f32),  # ot
        T.sblock_alloc_buffer((BK, nv, LANES), f32),  # st
        T.sblock_alloc_buffer((UNROLL, nv, LANES), f32),  # acc
        T.sblock_alloc_buffer((nv, LANES), f32),  # mx
        T.sblock_alloc_buffer((nv, LANES), f32),  # alpha
        T.sblock_alloc_buffer((3,), "int32"),  # loc
    )


def _ragged_block_loader(d_qk: int, d_v: int, dtype: str, rope_scaling: dict):
    """Macro: keys/values ``col0 .. col0 + BK`` of a sequence starting at row ``kv_beg`` of k/v into kb/vb."""

    @T.macro
    def load_block(k, v, kv_beg, k_pos0, hk, col0, kv_end, kb, vb, rotary_mode, rope_scale, rope_theta):
        for j in T.serial(BK):
            if col0 + j < kv_end:
                if rotary_mode == 1:
                    for c in T.serial(d_qk):
                        kb[j, c] = _rope(
                            k, k_pos0 + col0 + j, d_qk, rope_theta, rope_scale, (kv_beg + col0 + j, hk, c), dtype, rope_scaling
                        ).astype("float32")
                else:
                    for c in T.vectorized(d_qk):
                        kb[j, c] = k[kv_beg + col0 + j, hk, c].astype("float32")
                for c in T.vectorized(d_v):
                    vb[j, c] = v[kv_beg + col0 + j, hk, c].astype("float32")
            else:  # past the visible keys: zeros (masked anyway, but must be finite)
                for c in T.vectorized(d_qk):
                    kb[j, c] = T.float32(0)
                for c in T.vectorized(d_v):
                    vb[j, c] = T.float32(0)

    return load_block


def _paged_block_loader(d: int, page_size: int, dtype: str, rope_scaling: dict):
    """Macro: keys/values ``col0 .. col0 + BK`` of a sequence whose pages are ``page_values[page_beg:]``."""

    @T.macro
    def load_block(pages, page_values, page_beg, k_pos0, hk, col0, kv_end, kb, vb, rotary_mode, rope_scale, rope_theta):
        for j in T.serial(BK):
            if col0 + j < kv_end:
                page: T.let[T.int32] = page_values[page_beg + (col0 + j) // page_size]
                slot: T.let[T.int32] = (col0 + j) % page_size
                if rotary_mode == 1:
                    for c in T.serial(d):
                        kb[j, c] = _rope(
                            pages, k_pos0 + col0 + j, d, rope_theta, rope_scale, (page, 0, hk, slot, c), dtype, rope_scaling
                        ).astype("float32")
                else:
                    for c in T.vectorized(d):
                        kb[j, c] = pages[page, 0, hk, slot, c].astype("float32")
                for c in T.vectorized(d):
                    vb[j, c] = pages[page, 1, hk, slot, c].astype("float32")
            else:  # past the visible keys: zeros (masked anyway, but must be finite)
                for c in T.vectorized(d):
                    kb[j, c] = T.float32(0)
                    vb[j, c] = T.float32(0)

    return load_block


def _make_tile(group: int, d_qk: int, d_v: int, dtype: str, rope_scaling: dict, num_keys, load_block):
    """Macro ``tile``: work item ``p`` of both prefill kernels, tile slot ``p % n_slots`` of kv head
    ``p // n_slots``, over the keys of the tile's sequence ``b``.

    The kernels differ only in where the keys live. ``seq`` holds their per-sequence index buffers:
    ``seq[0][b]`` is the sequence's first key row (ragged) or page-table entry (paged) and
    ``num_keys(*seq, b)`` its number of keys; the macro ``load_block(*kv, kv_beg, ...)`` copies a
    block of those keys and values from the buffers ``kv`` into ``kb``/``vb``.
    """
    tq = tile_positions(group)
    block = make_prefill_core(tq * group, d_qk, d_v)
    locate, load_q, init_state, store = make_tile_macros(group, tq, d_qk, d_v, dtype, rope_scaling)

    @T.macro
    def tile(p, n_slots, q, q_indptr, q_rope_position, batch_size, kv, seq, k_rope_pos_offset, output, lse,
             causal, rotary_mode, rope_scale, rope_theta, sm_scale):
        with T.sblock("tile"):
            T.reads()
            T.writes()
            qt, kb, vb, lim, m, l, ot, st, acc, mx, alpha, loc = _alloc_tile(d_qk, d_v, tq * group)
            hk: T.let[T.int32] = p // n_slots
            locate(p % n_slots, n_slots, q_indptr, batch_size, loc)
            if loc[0] >= 0:
                b: T.let[T.int32] = loc[0]
                q_row0: T.let[T.int32] = q_indptr[b] + loc[1]
                q_len: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                nq: T.let[T.int32] = T.min(tq, q_len - loc[1])
                kv_beg: T.let[T.int32] = seq[0][b]
                n_kv: T.let[T.int32] = num_keys(*seq, b)
                diag0: T.let[T.int32] = n_kv - q_len + loc[1]  # last key the tile's first row sees (causal)
                kv_end: T.let[T.int32] = T.max(0, T.Select(causal > 0, T.min(n_kv, diag0 + nq), n_kv))  # keys it sees
                load_q(q, q_rope_position, qt, lim, hk, q_row0, nq, diag0, n_kv, causal, rotary_mode, rope_scale, rope_theta, sm_scale)
                init_state(m, l, ot)
                for blk in T.serial(T.ceildiv(kv_end, BK)):
                    load_block(*kv, kv_beg, k_rope_pos_offset[b], hk, blk * BK, kv_end, kb, vb, rotary_mode, rope_scale, rope_theta)
                    block(qt, kb, vb, lim, blk * BK, m, l, ot, st, acc, mx, alpha)
                store(output, lse, ot, m, l, hk, q_row0, nq)

    return tile


def _ragged_num_keys(kv_indptr, b):
    return kv_indptr[b + 1] - kv_indptr[b]


def attention_prefill_ragged_cpu(h_kv, h_q, d_qk, d_v, dtype, rope_scaling: dict[str, Any]):
    """Attention of the new tokens over themselves (causal or not); for ``_attention_prefill_ragged_cpu``."""
    if not supported(d_qk, d_v):
        return _prefill_kernels._attention_prefill_ragged_cpu(h_kv, h_q, d_qk, d_v, dtype, rope_scaling)
    group = h_q // h_kv
    tq = tile_positions(group)
    load_block = _ragged_block_loader(d_qk, d_v, dtype, rope_scaling)
    tile = _make_tile(group, d_qk, d_v, dtype, rope_scaling, _ragged_num_keys, load_block)

    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle, var_q_indptr: T.handle, var_k: T.handle, var_v: T.handle, var_kv_indptr: T.handle,
        var_q_rope_position: T.handle, var_k_rope_pos_offset: T.handle, var_output: T.handle, var_lse: T.handle,
        causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        batch_size, qo_len, kv_len = T.int32(), T.int32(), T.int32()
        q_indptr_off, kv_indptr_off, q_rope_off, k_rope_off = T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (qo_len, h_q, d_qk), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_off)
        k = T.match_buffer(var_k, (kv_len, h_kv, d_qk), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d_v), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_off)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_off)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_off)
        output = T.match_buffer(var_output, (qo_len, h_q, d_v), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")

        n_slots = T.ceildiv(qo_len, tq) + batch_size  # >= the number of tiles of all sequences
        for p in T.parallel(h_kv * n_slots):
            tile(p, n_slots, q, q_indptr, q_rope_position, batch_size, (k, v), (kv_indptr,), k_rope_pos_offset, output, lse,
                 causal, rotary_mode, rope_scale, rope_theta, sm_scale)

    return batch_prefill_ragged_kv


def attention_prefill_cpu(
    h_kv, h_q, d, dtype, sliding_window: bool, rope_scaling: dict[str, Any], page_size: int = 16, sliding_window_size: int = 1024
):
    """Attention of new tokens over the KV cache pages; for ``_attention_prefill_cpu`` (sliding window: built-in)."""
    if sliding_window or not supported(d, d):
        return _prefill_kernels._attention_prefill_cpu(h_kv, h_q, d, dtype, sliding_window, rope_scaling, page_size, sliding_window_size)
    group = h_q // h_kv
    tq = tile_positions(group)
    load_block = _paged_block_loader(d, page_size, dtype, rope_scaling)

    def num_keys(page_indptr, last_page_len, b):
        return paged_seq_len(page_indptr, last_page_len, b, page_size)

    tile = _make_tile(group, d, d, dtype, rope_scaling, num_keys, load_block)

    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle, var_q_indptr: T.handle, var_pages: T.handle, var_page_indptr: T.handle, var_page_values: T.handle,
        var_length_info: T.handle, var_k_rope_pos_offset: T.handle, var_q_rope_position: T.handle, var_output: T.handle, var_lse: T.handle,
        causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        batch_size, total_len = T.int32(), T.int32()
        q_indptr_off, q_rope_off = T.int32(), T.int32()
        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_off)
        pages, page_indptr, page_values, last_page_len, k_rope_pos_offset = match_paged_kv(
            var_pages, var_page_indptr, var_page_values, var_length_info, var_k_rope_pos_offset, batch_size, h_kv, page_size, d, dtype
        )
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_off)
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")

        n_slots = T.ceildiv(total_len, tq) + batch_size
        for p in T.parallel(h_kv * n_slots):
            tile(p, n_slots, q, q_indptr, q_rope_position, batch_size, (pages, page_values), (page_indptr, last_page_len),
                 k_rope_pos_offset, output, lse, causal, rotary_mode, rope_scale, rope_theta, sm_scale)

    return batch_prefill_paged_kv_cpu
