"""Building blocks of pdlink's CPU attention kernels (see :mod:`pdlink.compile.attention`).

Everything works in log2 units like TVM's kernels: scores are ``q.k * sm_scale * log2(e)`` and the
softmax uses ``exp2``. A masked score is ``NEG``; its weight ``exp2_approx(NEG - max)`` is the
clamped ``2**-126`` (~1e-38), numerically nothing next to the unmasked weights (>= 1 in all).
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.relax.frontend.nn.llm._kernel_common import _rope
from tvm.script import tirx as T

NEG = -1.0e30  # score of a masked (query, key) pair
TILE_ROWS = 48  # prefill: rows (query position x query head of a group) computed together
SCALE_LOG2E = math.log2(math.e)  # scores are in log2 units: exp(x) == exp2(x * log2(e))
BK = 32  # prefill: keys per online-softmax block
UNROLL = 4  # register blocking of the two small matmuls of a prefill block
LANES = 16  # vector width of the row (prefill) and head feature (decode) loops

# 2**f - 1 == f * poly(f) on [-0.5, 0.5], least-squares fit on Chebyshev nodes (max rel. err ~1e-7)
_EXP2_COEFFS = (6.93147206e-01, 2.40226485e-01, 5.55032904e-02, 9.61837325e-03, 1.33998483e-03, 1.53707048e-04)


def exp2_approx(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``2**x`` for float32 ``x`` (clamped to [-126, 126]) from round-to-nearest and a polynomial.

    Unlike ``T.exp2`` (``llvm.exp2``, one libm call per vector lane) this vectorizes.
    """
    xc = tirx.Var("xc", "float32")
    xi = tirx.Var("xi", "float32")
    f = xc - xi
    poly = tirx.const(_EXP2_COEFFS[-1], "float32")
    for coeff in _EXP2_COEFFS[-2::-1]:
        poly = poly * f + tirx.const(coeff, "float32")
    pow2 = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", xi) + 127, 23))
    body = (f * poly + tirx.const(1.0, "float32")) * pow2
    clamped = tirx.max(tirx.min(x, tirx.const(126.0, "float32")), tirx.const(-126.0, "float32"))
    return tirx.Let(xc, clamped, tirx.Let(xi, tirx.floor(xc + tirx.const(0.5, "float32")), body))


def supported(d_qk: int, d_v: int) -> bool:
    """Whether the kernels handle these head sizes (else the built-in kernel is used)."""
    return d_qk % LANES == 0 and d_v % LANES == 0


def tile_positions(group: int) -> int:
    """Query positions per prefill tile: tile rows (positions x ``group`` heads) fill whole vectors."""
    tq = LANES // math.gcd(group, LANES)
    return tq * max(1, TILE_ROWS // (tq * group))


def paged_seq_len(page_indptr, last_page_len, b, page_size: int):
    """Number of keys of sequence ``b`` in the page table (its last page holds ``last_page_len[b]``)."""
    n_pages = page_indptr[b + 1] - page_indptr[b]
    return T.Select(n_pages > 0, (n_pages - 1) * page_size + last_page_len[b], 0)


def match_paged_kv(var_pages, var_page_indptr, var_page_values, var_length_info, var_k_rope_pos_offset, batch_size, h_kv, page_size, d, dtype):
    """In a paged kernel's prim_func: bind the KV cache arguments of TVM's paged prefill and decode kernels.

    Returns ``pages[max_num_pages, 2 (k, v), h_kv, page_size, d]``, the page table of each of the
    ``batch_size`` sequences (``page_indptr``, ``page_values``), ``last_page_len`` and ``k_rope_pos_offset``.
    """
    nnz_pages, max_num_pages = tirx.Var("nnz_pages", "int32"), tirx.Var("max_num_pages", "int32")
    offsets = [tirx.Var(name, "int32") for name in ("page_indptr_off", "page_values_off", "length_info_off", "k_rope_off")]
    return (
        T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype),
        T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=offsets[0]),
        T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=offsets[1]),
        T.match_buffer(var_length_info, (batch_size,), "int32", elem_offset=offsets[2]),
        T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=offsets[3]),
    )


def make_prefill_core(rows: int, d_qk: int, d_v: int):
    """Macro ``block`` folding one block of ``BK`` keys into the running softmax state of a tile.

    A tile row ``r`` (a query position and head) lives at ``[r // LANES, r % LANES]`` of the row
    buffers, so every row loop is ``rows // LANES`` native-width vectors (LLVM splits vectors of
    odd widths such as 48 badly). With ``j`` a key of the block and ``c`` a head feature:
    ``qt[c, ...]`` scaled queries, ``kb[j, c]`` / ``vb[j, c]`` keys and values of the block,
    ``lim`` last visible key column of each row, running state ``m`` (max), ``l`` (sum of exp2)
    and ``ot[c, ...]`` (unnormalized output); ``st``, ``acc``, ``mx``, ``alpha`` are scratch.
    Rows of ``kb``/``vb`` past the end of the keys must hold finite values (they are masked).
    """
    nv = rows // LANES

    @T.macro
    def block(qt, kb, vb, lim, col0, m, l, ot, st, acc, mx, alpha):
        # st[j] = kb[j, :] . qt[:], UNROLL keys at a time so that each qt[c] load is reused
        for jo in T.serial(BK // UNROLL):
            for ji, rv in T.grid(UNROLL, nv):
                for rl in T.vectorized(LANES):
                    acc[ji, rv, rl] = T.float32(0)
            for c in T.serial(d_qk):
                for ji in T.unroll(UNROLL):
                    for rv in T.unroll(nv):
                        for rl in T.vectorized(LANES):
                            acc[ji, rv, rl] = acc[ji, rv, rl] + kb[jo * UNROLL + ji, c] * qt[c, rv, rl]
            for ji, rv in T.grid(UNROLL, nv):
                for rl in T.vectorized(LANES):
                    st[jo * UNROLL + ji, rv, rl] = T.Select(col0 + jo * UNROLL + ji <= lim[rv, rl], acc[ji, rv, rl], T.float32(NEG))
        # online softmax: new running max, rescale factor of the old state, probabilities
        for rv in T.serial(nv):
            for rl in T.vectorized(LANES):
                mx[rv, rl] = m[rv, rl]
            for j in T.serial(BK):
                for rl in T.vectorized(LANES):
                    mx[rv, rl] = T.max(mx[rv, rl], st[j, rv, rl])
            for rl in T.vectorized(LANES):
                alpha[rv, rl] = exp2_approx(m[rv, rl] - mx[rv, rl])
                m[rv, rl] = mx[rv, rl]
                l[rv, rl] = l[rv, rl] * alpha[rv, rl]
            for j in T.serial(BK):
                for rl in T.vectorized(LANES):
                    st[j, rv, rl] = exp2_approx(st[j, rv, rl] - m[rv, rl])
                    l[rv, rl] = l[rv, rl] + st[j, rv, rl]
        # ot[c] = ot[c] * alpha + sum_j vb[j, c] * st[j], UNROLL features at a time
        for co in T.serial(d_v // UNROLL):
            for ci, rv in T.grid(UNROLL, nv):
                for rl in T.vectorized(LANES):
                    acc[ci, rv, rl] = ot[co * UNROLL + ci, rv, rl] * alpha[rv, rl]
            for j in T.serial(BK):
                for ci in T.unroll(UNROLL):
                    for rv in T.unroll(nv):
                        for rl in T.vectorized(LANES):
                            acc[ci, rv, rl] = acc[ci, rv, rl] + vb[j, co * UNROLL + ci] * st[j, rv, rl]
            for ci, rv in T.grid(UNROLL, nv):
                for rl in T.vectorized(LANES):
                    ot[co * UNROLL + ci, rv, rl] = acc[ci, rv, rl]

    return block


def make_tile_macros(group: int, tq: int, d_qk: int, d_v: int, dtype: str, rope_scaling: dict):
    """Macros of the prefill kernels around :func:`make_prefill_core`: ``locate`` a work item's
    tile, ``load_q``, ``init_state`` and ``store`` (output and lse) of a tile."""
    rows = tq * group
    nv = rows // LANES

    @T.macro
    def locate(s, n_slots, q_indptr, batch_size, loc):
        # Slot s -> tile: loc[0] = sequence (-1: none), loc[1] = its first query position. Slots
        # are paired (0, n-1), (1, n-2), ... so that TVM's contiguous split of the parallel range
        # gives every thread a balanced mix of short and long causal rows.
        s2: T.let[T.int32] = T.Select(s % 2 == 0, s // 2, n_slots - 1 - s // 2)
        loc[0] = -1
        loc[2] = 0  # tiles of the sequences before b
        for b in T.serial(batch_size):
            n_tiles: T.let[T.int32] = T.ceildiv(q_indptr[b + 1] - q_indptr[b], tq)
            if loc[0] < 0 and s2 < loc[2] + n_tiles:
                loc[0] = b
                loc[1] = (s2 - loc[2]) * tq
            loc[2] = loc[2] + n_tiles

    @T.macro
    def load_q(q, q_rope_position, qt, lim, hk, q_row0, nq, diag0, n_kv, causal, rotary_mode, rope_scale, rope_theta, sm_scale):
        # qt: the tile's queries, row r = (position r // group, head hk * group + r % group),
        # scaled by sm_scale * log2(e). lim: last key column each row sees (diag0: the first
        # position's diagonal); -1 masks everything for the padding rows of a short tile.
        for r in T.serial(rows):
            if r // group < nq:
                lim[r // LANES, r % LANES] = T.Select(causal > 0, diag0 + r // group, n_kv - 1)
                if rotary_mode == 1:
                    for c in T.serial(d_qk):
                        qt[c, r // LANES, r % LANES] = _rope(
                            q, q_rope_position[q_row0 + r // group], d_qk, rope_theta, rope_scale,
                            (q_row0 + r // group, hk * group + r % group, c), dtype, rope_scaling,
                        ).astype("float32") * sm_scale * SCALE_LOG2E
                else:
                    for c in T.serial(d_qk):
                        qt[c, r // LANES, r % LANES] = q[q_row0 + r // group, hk * group + r % group, c].astype("float32") * sm_scale * SCALE_LOG2E
            else:
                lim[r // LANES, r % LANES] = -1
                for c in T.serial(d_qk):
                    qt[c, r // LANES, r % LANES] = T.float32(0)

    @T.macro
    def init_state(m, l, ot):
        # TVM's kernels start from max -5e4 and sum 1: a row without keys gets output 0, lse -5e4
        for rv in T.serial(nv):
            for rl in T.vectorized(LANES):
                m[rv, rl] = T.float32(-5e4)
                l[rv, rl] = T.float32(1)
            for c in T.serial(d_v):
                for rl in T.vectorized(LANES):
                    ot[c, rv, rl] = T.float32(0)

    @T.macro
    def store(output, lse, ot, m, l, hk, q_row0, nq):
        for r in T.serial(rows):
            if r // group < nq:
                for c in T.serial(d_v):
                    output[q_row0 + r // group, hk * group + r % group, c] = (ot[c, r // LANES, r % LANES] / l[r // LANES, r % LANES]).astype(dtype)
                lse[q_row0 + r // group, hk * group + r % group] = m[r // LANES, r % LANES] + T.log2(l[r // LANES, r % LANES])

    return locate, load_q, init_state, store
