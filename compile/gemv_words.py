"""Decode GEMV of block-quantized weights on x86 CPUs with AVX-512: values masked in place.

Widening 4- or 8-bit values to 32-bit lanes takes shuffles (``vpmovzxbd``/``vpmovsxbd``), which
run on few ports; this kernel uses none in its inner loop. A row's packed values are read as 32-bit
words, 16 words per vector; value ``n`` of every word is masked in place (``word & (15 << 4n)`` for
nibbles; bytes are shifted to the top of the word first, keeping their sign) and converted to float
as is: ``q * 2**place`` is exact in float32. The input ``x`` is rearranged once per call into
``xp[n]``, the elements that value ``n`` of each word multiplies, times ``2**-place`` (exact), and
block parameters are applied once per lane, after the values of a word are summed::

    xp[n, j] = x[k(j, n)] * 2**-place(n); xs[j] = sum_n x[k(j, n)]    # once per call
    for o_tile (parallel)                                              # O_TILE rows
      for o in o_tile
        for chunk of 16 words (8 or 4 words at the end of a row)
          t = sum_n xp[n, chunk] * f32(value n of words, in place)     # and, convert, FMA per 16
          acc += d[block of lane] * t + m[block of lane] * xs[chunk]
        out[o] = sum of acc

``w = d * q + m`` (q4_1); ``w = d * (q - 8)`` (q4sym) is ``m = -8 d``; ``w = d * q`` (q8_0) has no
``m`` term. Sums run in another order than the te GEMV of :mod:`pdlink.compile.formatted_matrix`
(rounding differs in the last bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tvm import tirx
from tvm.script import tirx as T

from pdlink.compile.schedule import O_TILE
from pdlink.compile.weight_format import GROUP

WORD_BITS = 32


@dataclass(frozen=True)
class Packing:
    """How a format's values sit in 32-bit words: ``per_word`` values of ``bits`` bits, ``signed``
    ones in two's complement. Word ``w`` of a block holds 4 bytes ``4w .. 4w + 3`` of it; its value
    ``n`` is weight ``4 w + offset(n)`` of the block."""

    bits: int
    signed: bool
    offset: Callable

    @property
    def per_word(self) -> int:
        return WORD_BITS // self.bits

    @property
    def words_per_block(self) -> int:
        return GROUP // self.per_word

    def extract(self, words, n: int, lanes: int):
        """Value ``n`` of each word at its place (times ``2 ** place(n)``), as float32 lanes.

        Signed values are moved to the top of the word first, so the sign bit is the word's."""
        top = WORD_BITS - self.bits if self.signed else self.bits * n
        if self.signed and top > self.bits * n:
            words = T.shift_left(words, T.Broadcast(T.int32(top - self.bits * n), lanes))
        mask = ((1 << self.bits) - 1) << top
        mask = mask - (1 << WORD_BITS) if self.signed and mask >= 1 << (WORD_BITS - 1) else mask
        dtype = "int32" if self.signed else "uint32"
        return T.bitwise_and(words, T.Broadcast(tirx.const(mask, dtype), lanes)).astype(f"float32x{lanes}")

    def place(self, n: int) -> int:
        return WORD_BITS - self.bits if self.signed else self.bits * n


# GGUF block order: byte r of a block holds elements r (low nibble) and r + 16 (high nibble)
NIBBLES = Packing(bits=4, signed=False, offset=lambda n: n // 2 + n % 2 * 16)
BYTES = Packing(bits=8, signed=True, offset=lambda n: n)
# format -> (packing, offset term: "min" array, "-8d" (q - 8), or none)
FORMATS = {
    "q4_1": (NIBBLES, "min"),
    "q4sym_f16": (NIBBLES, "-8d"),
    "q4sym_f32": (NIBBLES, "-8d"),
    "q8_0": (BYTES, None),
}


def supports_word_gemv(fmt_name: str, n_in: int, target) -> bool:
    """Whether ``word_gemv`` serves this format and shape on ``target`` (x86-64 with AVX-512)."""
    from tvm.target import codegen

    if fmt_name not in FORMATS or n_in % GROUP or target is None or target.kind.name != "llvm":
        return False
    if "x86_64" not in str(target.attrs.get("mtriple", "")):
        return False
    return bool(codegen.target_has_features("avx512f", target))


def _inverse_place(packing: Packing, n):
    """``2 ** -place(n)`` for a (loop variable) value index ``n``."""
    value = T.float32(2.0 ** -packing.place(packing.per_word - 1))
    for i in reversed(range(packing.per_word - 1)):
        value = T.Select(n == i, T.float32(2.0 ** -packing.place(i)), value)
    return value


def _word_sum(packing: Packing, x, b, w):
    """Sum of the inputs that the values of word ``w`` of block ``b`` multiply."""
    total = None
    for n in range(packing.per_word):
        term = x[0, b * GROUP + w * 4 + packing.offset(n)]
        total = term if total is None else total + term
    return total


def _chunks(words: int) -> list[tuple[int, int]]:
    """(first word, lanes) of each vector of a row: 16 words at a time, then 8 and 4."""
    out, start = [], 0
    for lanes in (16, 8, 4):
        while words - start >= lanes:
            out.append((start, lanes))
            start += lanes
    return out


def _block_params(packing: Packing, offset, scale, minimum, o, first_word: int, lanes: int):
    """Per-lane (d, m) vectors of a chunk (each block's parameters repeated over its words); m is
    None for formats without an offset term."""
    per_block = packing.words_per_block
    blocks = lanes // per_block
    b0 = first_word // per_block

    def per_lane(params):
        if blocks == 1:
            return T.Broadcast(params[o, b0].astype("float32"), lanes)
        values = params[o, T.Ramp(b0, 1, blocks)].astype(f"float32x{blocks}")
        return tirx.Shuffle([values] * per_block, [i // per_block for i in range(lanes)])

    d = per_lane(scale)
    if offset == "min":
        return d, per_lane(minimum)
    return d, (d * T.Broadcast(T.float32(-8), lanes) if offset == "-8d" else None)


def _chunk_sum(packing: Packing, xp, q32, o, first_word: int, lanes: int):
    """``sum_n xp[n] * (value n of each word, at its place)`` over one chunk of packed words."""
    words = q32[o, T.Ramp(first_word, 1, lanes)]
    total = None
    for n in range(packing.per_word):
        term = xp[n, T.Ramp(first_word, 1, lanes)] * packing.extract(words, n, lanes)
        total = term if total is None else total + term
    return total


def _fold(vec, lanes: int, into_lanes: int):
    """Add the halves of a vector until ``into_lanes`` lanes are left (the last level first)."""
    while lanes > into_lanes:
        lanes //= 2
        vec = tirx.Shuffle([vec], list(range(lanes))) + tirx.Shuffle([vec], list(range(lanes, 2 * lanes)))
    return vec


def _row_value(packing: Packing, offset, xp, xs, q32, scale, minimum, o, words: int):
    """``out[o]`` as one expression: chunk vectors of each width summed, then folded to a scalar."""
    by_width: dict[int, object] = {}
    for first, lanes in _chunks(words):
        d, m = _block_params(packing, offset, scale, minimum, o, first, lanes)
        vec = d * _chunk_sum(packing, xp, q32, o, first, lanes)
        if m is not None:
            vec = vec + m * xs[T.Ramp(first, 1, lanes)]
        by_width[lanes] = vec if lanes not in by_width else by_width[lanes] + vec
    total, width = None, 0
    for lanes in (16, 8, 4):
        if lanes in by_width:
            total = by_width[lanes] if total is None else _fold(total, width, lanes) + by_width[lanes]
            width = lanes
    scalar = _fold(total, width, 1)
    return tirx.Shuffle([scalar], [0]) if width > 1 else scalar


def word_gemv(fmt_name: str, n_in: int, n_out: int, scale_dtype: str, swiglu: bool = False):
    """PrimFunc ``(x[1, n_in], q, scale[, min], out)`` for ``fmt_name`` in FORMATS: ``out = x @ W.T``
    of shape ``[1, n_out]``, or with ``swiglu`` ``silu(gate) * up`` of its halves, ``[1, n_out / 2]``."""
    packing, offset = FORMATS[fmt_name]
    groups, words, per_word = n_in // GROUP, n_in // packing.per_word, packing.per_word
    q_dtype = "int8" if packing.signed else "uint8"
    word_dtype = "int32" if packing.signed else "uint32"
    rows = n_out // 2 if swiglu else n_out
    tiles = (rows + O_TILE - 1) // O_TILE
    per_block = packing.words_per_block
    value_offset = packing.offset

    def row(xp, xs, q32, scale, minimum, o):
        return _row_value(packing, offset, xp, xs, q32, scale, minimum, o, words)

    @T.macro
    def store_plain(xp, xs, q32, scale, minimum, out, o):
        out[0, o] = row(xp, xs, q32, scale, minimum, o)

    @T.macro
    def store_swiglu(xp, xs, q32, scale, minimum, out, o):
        gate: T.let[T.float32] = row(xp, xs, q32, scale, minimum, o)
        out[0, o] = gate * T.sigmoid(gate) * row(xp, xs, q32, scale, minimum, o + rows)

    store = store_swiglu if swiglu else store_plain

    @T.macro
    def body(x, q, scale, minimum, out):
        xp = T.alloc_buffer((per_word, words), "float32")
        xs = T.alloc_buffer((words,), "float32")
        for b in T.serial(groups):
            for n in T.unroll(per_word):
                for w in T.vectorized(per_block):
                    xp[n, b * per_block + w] = x[0, b * GROUP + w * 4 + value_offset(n)] * _inverse_place(packing, n)
            for w in T.vectorized(per_block):
                xs[b * per_block + w] = _word_sum(packing, x, b, w)
        q32 = T.decl_buffer((n_out, words), word_dtype, data=q.data)
        for t in T.parallel(tiles):
            for oi in T.serial(O_TILE):
                if t * O_TILE + oi < rows:
                    store(xp, xs, q32, scale, minimum, out, t * O_TILE + oi)

    return _entry_point(body, n_in, n_out, rows, q_dtype, scale_dtype, with_min=offset == "min")


def _entry_point(body, n_in: int, n_out: int, rows: int, q_dtype: str, scale_dtype: str, with_min: bool):
    """The PrimFunc around ``body``: ``(x, q, scale, min, out)`` or, without a min array, ``(x, q, scale, out)``."""
    groups, q_cols = n_in // GROUP, n_in if q_dtype == "int8" else n_in // 2
    if not with_min:

        @T.prim_func(private=True, s_tir=True)
        def gemv_scaled(x: T.Buffer((1, n_in), "float32"), q: T.Buffer((n_out, q_cols), q_dtype),
                        scale: T.Buffer((n_out, groups), scale_dtype), out: T.Buffer((1, rows), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            body(x, q, scale, scale, out)

        return gemv_scaled

    @T.prim_func(private=True, s_tir=True)
    def gemv(x: T.Buffer((1, n_in), "float32"), q: T.Buffer((n_out, q_cols), q_dtype),
             scale: T.Buffer((n_out, groups), scale_dtype), minimum: T.Buffer((n_out, groups), scale_dtype),
             out: T.Buffer((1, rows), "float32")):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        body(x, q, scale, minimum, out)

    return gemv
