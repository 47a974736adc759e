"""Decode attention kernel for CPUs: one new token per sequence over its cached pages.

Flash-decoding: work items are (sequence, chunk of ``DECODE_CHUNK_PAGES`` pages), so that one long
sequence still keeps every thread busy, and a second parallel loop merges the chunks' states.
Each work item reads its pages whole (the keys and values of all kv heads): a page is one contiguous
block of memory, and at long contexts decode is bound by reading the cache from DRAM.
"""

from __future__ import annotations

from typing import Any

from tvm.relax.frontend.nn.llm import _decode_kernels
from tvm.relax.frontend.nn.llm._kernel_common import _rope
from tvm.script import tirx as T

from pdlink.compile.attention_core import LANES, NEG, SCALE_LOG2E, exp2_approx, match_paged_kv, paged_seq_len, supported

DECODE_CHUNK_PAGES = 4  # pages per work item (more items than threads on long contexts)


def make_decode_core(group: int, d: int, page_size: int):
    """Macro ``page`` folding the keys and values of kv head ``hk`` in one page into the softmax
    state of that head's ``group`` query heads (rows ``h = hk * group + g`` of the state).

    ``qs[h, c]`` scaled queries, ``kb[j, c]`` the page's keys (rows ``j >= n_valid`` zero), its
    values read from ``pages[page_no, 1, hk, j, c]``; state ``m[h]``, ``l[h]``, ``o[h, c]`` like
    the prefill core; ``s``, ``part``, ``mx``, ``alpha``, ``acc`` are scratch. Loops over head
    features are vectorized (one query row per head is too few rows to vectorize over).
    """
    nc = d // LANES
    assert LANES == 16 and d % LANES == 0

    @T.macro
    def page(qs, kb, pages, page_no, hk, n_valid, m, l, o, s, part, mx, alpha, acc):
        h0 = hk * group
        for g in T.serial(group):  # the group's queries into acc (small: kept in registers)
            for c in T.vectorized(d):
                acc[g, c] = qs[h0 + g, c]
        # s[g, j] = q[g, :] . kb[j, :]: LANES partial sums, then a halving tree over the lanes
        for j in T.serial(page_size):
            for g in T.unroll(group):
                for cl in T.vectorized(LANES):
                    part[g, cl] = acc[g, cl] * kb[j, cl]
                for cv in T.unroll(nc - 1):
                    for cl in T.vectorized(LANES):
                        part[g, cl] = part[g, cl] + acc[g, (cv + 1) * LANES + cl] * kb[j, (cv + 1) * LANES + cl]
                for cl in T.vectorized(8):
                    part[g, cl] = part[g, cl] + part[g, cl + 8]
                for cl in T.vectorized(4):
                    part[g, cl] = part[g, cl] + part[g, cl + 4]
                for cl in T.vectorized(2):
                    part[g, cl] = part[g, cl] + part[g, cl + 2]
                s[g, j] = T.Select(j < n_valid, part[g, 0] + part[g, 1], T.float32(NEG))
        # online softmax update of each head
        for g in T.serial(group):
            mx[g] = m[h0 + g]
            for j in T.serial(page_size):
                mx[g] = T.max(mx[g], s[g, j])
            alpha[g] = exp2_approx(m[h0 + g] - mx[g])
            m[h0 + g] = mx[g]
            for j in T.vectorized(page_size):
                s[g, j] = exp2_approx(s[g, j] - mx[g])
            l[h0 + g] = l[h0 + g] * alpha[g]
            for j in T.serial(page_size):
                l[h0 + g] = l[h0 + g] + s[g, j]
            for c in T.vectorized(d):
                acc[g, c] = o[h0 + g, c] * alpha[g]
        # o[h] += sum_j s[g, j] * v[j], accumulated in acc (small: stays in registers); each
        # value row is loaded once for all heads of the group
        for j in T.serial(n_valid):
            for g in T.unroll(group):
                for c in T.vectorized(d):
                    acc[g, c] = acc[g, c] + s[g, j] * pages[page_no, 1, hk, j, c].astype("float32")
        for g in T.serial(group):
            for c in T.vectorized(d):
                o[h0 + g, c] = acc[g, c]

    return page


def _decode_macros(h_q: int, d: int, page_size: int, dtype: str, rope_scaling: dict):
    """``load_queries`` (and reset the state), ``load_keys`` of one page and kv head, ``merge_chunks``."""

    @T.macro
    def load_queries(Q, q_rope_position, b, qs, m, l, o, rotary_mode, rope_scale, rope_theta, sm_scale):
        for h in T.serial(h_q):
            if rotary_mode == 1:
                for c in T.serial(d):
                    qs[h, c] = _rope(
                        Q, q_rope_position[b], d, rope_theta, rope_scale, (b, h, c), dtype, rope_scaling
                    ).astype("float32") * sm_scale * SCALE_LOG2E
            else:
                for c in T.vectorized(d):
                    qs[h, c] = Q[b, h, c].astype("float32") * sm_scale * SCALE_LOG2E
            m[h] = T.float32(-5e4)
            l[h] = T.float32(0)
            for c in T.vectorized(d):
                o[h, c] = T.float32(0)

    @T.macro
    def load_keys(pages, page_no, hk, n_valid, k_pos0, kb, rotary_mode, rope_scale, rope_theta):
        for j in T.serial(page_size):
            if j < n_valid and rotary_mode == 1:
                for c in T.serial(d):
                    kb[j, c] = _rope(pages, k_pos0 + j, d, rope_theta, rope_scale, (page_no, 0, hk, j, c), dtype, rope_scaling).astype("float32")
            elif j < n_valid:
                for c in T.vectorized(d):
                    kb[j, c] = pages[page_no, 0, hk, j, c].astype("float32")
            else:
                for c in T.vectorized(d):
                    kb[j, c] = T.float32(0)

    @T.macro
    def merge_chunks(part_o, part_ml, first, used, acc, output, lse, b, h):
        # start from TVM's initial state (max -5e4, sum 1, o 0) and fold in the used chunks;
        # acc holds o, then the max and the sum
        acc[d] = T.float32(-5e4)
        for c in T.serial(used):
            acc[d] = T.max(acc[d], part_ml[first + c, h, 0])
        acc[d + 1] = T.exp2(T.float32(-5e4) - acc[d])
        for i in T.vectorized(d):
            acc[i] = T.float32(0)
        for c in T.serial(used):
            w: T.let[T.float32] = T.exp2(part_ml[first + c, h, 0] - acc[d])
            acc[d + 1] = acc[d + 1] + part_ml[first + c, h, 1] * w
            for i in T.vectorized(d):
                acc[i] = acc[i] + part_o[first + c, h, i] * w
        for i in T.serial(d):
            output[b, h, i] = (acc[i] / acc[d + 1]).astype(dtype)
        lse[b, h] = acc[d] + T.log2(acc[d + 1])

    return load_queries, load_keys, merge_chunks


def attention_decode_cpu(num_kv_heads, num_qo_heads, head_dim, qkv_dtype, sliding_window: bool, rope_scaling: dict[str, Any], page_size: int = 16):
    """One new token per sequence over its cached pages; for ``_attention_decode_cpu`` (sliding window: built-in)."""
    if sliding_window or not supported(head_dim, head_dim):
        return _decode_kernels._attention_decode_cpu(num_kv_heads, num_qo_heads, head_dim, qkv_dtype, sliding_window, rope_scaling, page_size)
    h_kv, h_q, d, dtype = num_kv_heads, num_qo_heads, head_dim, qkv_dtype
    group = h_q // h_kv
    fold_page = make_decode_core(group, d, page_size)
    load_queries, load_keys, merge_chunks = _decode_macros(h_q, d, page_size, dtype, rope_scaling)
    chunk = DECODE_CHUNK_PAGES

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle, pages_handle: T.handle, page_table_indptr_handle: T.handle, page_table_values_handle: T.handle,
        var_length_info: T.handle, k_rope_pos_offset_handle: T.handle, q_rope_position_handle: T.handle,
        output_handle: T.handle, lse_handle: T.handle,
        rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        B, q_rope_off = T.int32(), T.int32()
        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages, page_indptr, page_values, last_page_len, k_rope_pos_offset = match_paged_kv(
            pages_handle, page_table_indptr_handle, page_table_values_handle, var_length_info, k_rope_pos_offset_handle,
            B, h_kv, page_size, d, dtype,
        )
        nnz_pages = page_values.shape[0]
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", elem_offset=q_rope_off)
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")

        # partial state (o, then m and l) of each (sequence, chunk)
        part_o = T.alloc_buffer((B * T.ceildiv(nnz_pages, chunk), h_q, d), "float32")
        part_ml = T.alloc_buffer((B * T.ceildiv(nnz_pages, chunk), h_q, 2), "float32")
        n_chunks = T.ceildiv(nnz_pages, chunk)  # >= the chunks of any one sequence
        for p in T.parallel(B * n_chunks):
            with T.sblock("chunk"):
                T.reads()
                T.writes()
                qs, o, kb, s, part, m, l, mx, alpha, acc = _alloc_decode(h_q, group, d, page_size)
                b: T.let[T.int32] = p // n_chunks
                n_kv: T.let[T.int32] = paged_seq_len(page_indptr, last_page_len, b, page_size)
                pg_end: T.let[T.int32] = T.min(T.ceildiv(n_kv, page_size), (p % n_chunks + 1) * chunk)
                if p % n_chunks * chunk < pg_end:
                    load_queries(Q, q_rope_position, b, qs, m, l, o, rotary_mode, rope_scale, rope_theta, sm_scale)
                    # page by page, all kv heads of a page together: a page is one contiguous block
                    # of memory (reading it head by head ran ~20% slower out of DRAM)
                    for pg in T.serial(p % n_chunks * chunk, pg_end):
                        page_no: T.let[T.int32] = page_values[page_indptr[b] + pg]
                        n_valid: T.let[T.int32] = T.min(page_size, n_kv - pg * page_size)
                        for hk in T.serial(h_kv):
                            load_keys(pages, page_no, hk, n_valid, k_rope_pos_offset[b] + pg * page_size, kb, rotary_mode, rope_scale, rope_theta)
                            fold_page(qs, kb, pages, page_no, hk, n_valid, m, l, o, s, part, mx, alpha, acc)
                    for h in T.serial(h_q):
                        for c in T.vectorized(d):
                            part_o[p, h, c] = o[h, c]
                        part_ml[p, h, 0] = m[h]
                        part_ml[p, h, 1] = l[h]
        for p in T.parallel(B * h_q):
            with T.sblock("merge_chunks"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((d + 2,), "float32")
                n_pages: T.let[T.int32] = T.ceildiv(paged_seq_len(page_indptr, last_page_len, p // h_q, page_size), page_size)
                merge_chunks(part_o, part_ml, p // h_q * n_chunks, T.ceildiv(n_pages, chunk), acc, output, lse, p // h_q, p % h_q)

    return batch_decode_paged_kv


def _alloc_decode(h_q: int, group: int, d: int, page_size: int):
    """Per-work-item scratch of the decode kernel: qs, o, kb, s, part, m, l, mx, alpha, acc."""
    f32 = "float32"
    shapes = [(h_q, d), (h_q, d), (page_size, d), (group, page_size), (group, LANES), (h_q,), (h_q,), (group,), (group,), (group, d)]
    return tuple(T.sblock_alloc_buffer(shape, f32) for shape in shapes)

