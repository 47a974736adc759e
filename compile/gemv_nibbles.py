"""Decode GEMV of 4-bit block formats on x86 CPUs with AVX-512: nibbles masked in place.

Widening 4-bit values to 32-bit lanes takes shuffles (``vpmovzxbd``), which run on few ports; this
kernel uses none in its inner loop. A row's packed bytes are read as 32-bit words, 16 words (4
blocks) per vector; nibble ``n`` of every word is ``word & (15 << 4n)``, converted to float as is:
``q << 4n`` is exact in float32, and the input ``x`` is rearranged once per call into ``xp[n]``,
the elements that nibble ``n`` of each word multiplies, times ``2**-4n`` (exact). Block parameters
are applied once per lane, after the 8 nibbles of a word are summed::

    xp[n, j] = x[k(j, n)] * 2**-4n; xs[j] = sum_n x[k(j, n)]     # once per call
    for o_tile (parallel)                                         # O_TILE rows
      for o in o_tile
        for chunk of 16 words (4 blocks; 8 or 4 words at the end of a row)
          t = sum_n xp[n, chunk] * f32(words & (15 << 4n))        # and, convert, FMA per 16 weights
          acc += d[block of lane] * t + m[block of lane] * xs[chunk]
        out[o] = sum of acc

``w = d * q + m`` (q4_1); ``w = d * (q - 8)`` (q4sym) is ``m = -8 d``. Sums run in another order
than the te GEMV of :mod:`pdlink.compile.formatted_matrix` (rounding differs in the last bits).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from pdlink.compile.schedule import O_TILE
from pdlink.compile.weight_format import GROUP

WORDS_PER_BLOCK = GROUP // 8  # 32-bit words of packed nibbles per block
NIBBLES = 8  # nibbles per 32-bit word
NIBBLE_FORMATS = ("q4_1", "q4sym_f16", "q4sym_f32")


def supports_nibble_gemv(fmt_name: str, n_in: int, target) -> bool:
    """Whether ``nibble_gemv`` serves this format and shape on ``target`` (x86-64 with AVX-512)."""
    from tvm.target import codegen

    if fmt_name not in NIBBLE_FORMATS or n_in % GROUP or target is None or target.kind.name != "llvm":
        return False
    if "x86_64" not in str(target.attrs.get("mtriple", "")):
        return False
    return bool(codegen.target_has_features("avx512f", target))


def _element_of(j, n):
    """Index ``k`` of the weight in nibble ``n`` of packed word ``j`` (GGUF block order: byte ``r``
    of a block holds elements ``r`` (low nibble) and ``r + 16`` (high))."""
    byte = j * 4 + n // 2
    return byte // 16 * GROUP + byte % 16 + n % 2 * 16


def _nibble_weight(n):
    """``2 ** -4n`` for a (loop variable) nibble index ``n``: undoes the nibble's place value."""
    value = T.float32(2.0 ** (-4 * (NIBBLES - 1)))
    for i in reversed(range(NIBBLES - 1)):
        value = T.Select(n == i, T.float32(2.0 ** (-4 * i)), value)
    return value


def _chunks(words: int) -> list[tuple[int, int]]:
    """(first word, lanes) of each vector of a row: 16 words at a time, then 8 and 4."""
    out, start = [], 0
    for lanes in (16, 8, 4):
        while words - start >= lanes:
            out.append((start, lanes))
            start += lanes
    return out


def _lane_blocks(lanes: int) -> list[int]:
    return [i // WORDS_PER_BLOCK for i in range(lanes)]


def _block_params(scale, minimum, o, first_word: int, lanes: int, symmetric: bool):
    """Per-lane (d, m) vectors of a chunk: each block's parameters repeated over its 4 words."""
    blocks = lanes // WORDS_PER_BLOCK
    b0 = first_word // WORDS_PER_BLOCK

    def per_lane(params):
        if blocks == 1:
            return T.Broadcast(params[o, b0].astype("float32"), lanes)
        per_block = params[o, T.Ramp(b0, 1, blocks)].astype(f"float32x{blocks}")
        return tirx.Shuffle([per_block] * WORDS_PER_BLOCK, _lane_blocks(lanes))

    d = per_lane(scale)
    return (d, d * T.Broadcast(T.float32(-8), lanes)) if symmetric else (d, per_lane(minimum))


def _chunk_sum(xp, q32, o, first_word: int, lanes: int):
    """``sum_n xp[n] * f32(words & (15 << 4n))`` over one chunk of packed words."""
    words = q32[o, T.Ramp(first_word, 1, lanes)]
    total = None
    for n in range(NIBBLES):
        nib = T.bitwise_and(words, T.Broadcast(T.uint32(15 << (4 * n)), lanes)).astype(f"float32x{lanes}")
        term = xp[n, T.Ramp(first_word, 1, lanes)] * nib
        total = term if total is None else total + term
    return total


def _fold(vec, lanes: int, into_lanes: int):
    """Add the halves of a vector until ``into_lanes`` lanes are left (the last level first)."""
    while lanes > into_lanes:
        lanes //= 2
        vec = tirx.Shuffle([vec], list(range(lanes))) + tirx.Shuffle([vec], list(range(lanes, 2 * lanes)))
    return vec


def _row_value(xp, xs, q32, scale, minimum, o, words: int, symmetric: bool):
    """``out[o]`` as one expression: chunk vectors of each width summed, then folded to a scalar."""
    by_width: dict[int, object] = {}
    for first, lanes in _chunks(words):
        d, m = _block_params(scale, minimum, o, first, lanes, symmetric)
        vec = d * _chunk_sum(xp, q32, o, first, lanes) + m * xs[T.Ramp(first, 1, lanes)]
        by_width[lanes] = vec if lanes not in by_width else by_width[lanes] + vec
    total, width = None, 0
    for lanes in (16, 8, 4):
        if lanes in by_width:
            total = by_width[lanes] if total is None else _fold(total, width, lanes) + by_width[lanes]
            width = lanes
    scalar = _fold(total, width, 1)
    return tirx.Shuffle([scalar], [0]) if width > 1 else scalar


def nibble_gemv(fmt_name: str, n_in: int, n_out: int, scale_dtype: str):
    """PrimFunc ``(x[1, n_in], q, scale[, min], out[1, n_out])`` for ``fmt_name`` in NIBBLE_FORMATS."""
    groups, words = n_in // GROUP, n_in // NIBBLES
    tiles = (n_out + O_TILE - 1) // O_TILE
    symmetric = fmt_name != "q4_1"

    @T.macro
    def body(x, q, scale, minimum, out):
        xp = T.alloc_buffer((NIBBLES, words), "float32")
        xs = T.alloc_buffer((words,), "float32")
        for j in T.serial(words):
            xs[j] = T.float32(0)
            for n in T.unroll(NIBBLES):
                xp[n, j] = x[0, _element_of(j, n)] * _nibble_weight(n)
                xs[j] = xs[j] + x[0, _element_of(j, n)]
        q32 = T.decl_buffer((n_out, words), "uint32", data=q.data)
        for t in T.parallel(tiles):
            for oi in T.serial(O_TILE):
                if t * O_TILE + oi < n_out:
                    out[0, t * O_TILE + oi] = _row_value(xp, xs, q32, scale, minimum, t * O_TILE + oi, words, symmetric)

    if symmetric:

        @T.prim_func(private=True, s_tir=True)
        def gemv_sym(x: T.Buffer((1, n_in), "float32"), q: T.Buffer((n_out, n_in // 2), "uint8"),
                     scale: T.Buffer((n_out, groups), scale_dtype), out: T.Buffer((1, n_out), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            body(x, q, scale, scale, out)

        return gemv_sym

    @T.prim_func(private=True, s_tir=True)
    def gemv(x: T.Buffer((1, n_in), "float32"), q: T.Buffer((n_out, n_in // 2), "uint8"),
             scale: T.Buffer((n_out, groups), scale_dtype), minimum: T.Buffer((n_out, groups), scale_dtype),
             out: T.Buffer((1, n_out), "float32")):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        body(x, q, scale, minimum, out)

    return gemv
