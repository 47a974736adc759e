"""Decode GEMV of block-quantized weights on CPUs with vector units: values masked in place.

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

The vector width follows the target (``kernel_path``): 16 words per chunk with AVX-512, 8 with AVX2
(256-bit), 4 with NEON (128-bit); anything else keeps the te GEMV (``generic``). Without AVX-512
there is no unsigned int32 -> float32 conversion on x86 (LLVM expands it to five instructions), so
there a nibble in a word's top bits is shifted down by 4 first and converted as a signed value.
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

    def extract(self, words, n: int, lanes: int, unsigned_convert: bool = True):
        """Value ``n`` of each word at its place (times ``2 ** place(n)``), as float32 lanes.

        Signed values are moved to the top of the word first, so the sign bit is the word's; without
        ``unsigned_convert`` an unsigned value in the top bits is moved down until bit 31 is clear."""
        top = self.place(n, unsigned_convert)
        if self.signed and top > self.bits * n:
            words = T.shift_left(words, T.Broadcast(T.int32(top - self.bits * n), lanes))
        elif not self.signed and top < self.bits * n:
            words = T.shift_right(words, T.Broadcast(tirx.const(self.bits * n - top, "uint32"), lanes))
        mask = ((1 << self.bits) - 1) << top
        mask = mask - (1 << WORD_BITS) if self.signed and mask >= 1 << (WORD_BITS - 1) else mask
        dtype = "int32" if self.signed else "uint32"
        return T.bitwise_and(words, T.Broadcast(tirx.const(mask, dtype), lanes)).astype(f"float32x{lanes}")

    def place(self, n: int, unsigned_convert: bool = True) -> int:
        if self.signed:
            return WORD_BITS - self.bits
        return self.bits * n if unsigned_convert else min(self.bits * n, WORD_BITS - 1 - self.bits)


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


@dataclass(frozen=True)
class VectorIsa:
    """A kernel path: chunk widths in 32-bit lanes (widest first) and whether the ISA converts
    unsigned int32 to float32 in one instruction."""

    name: str
    widths: tuple[int, ...]
    unsigned_convert: bool


KERNEL_PATHS = {
    "avx512": VectorIsa("avx512", (16, 8, 4), unsigned_convert=True),
    "avx2": VectorIsa("avx2", (8, 4), unsigned_convert=False),
    "neon": VectorIsa("neon", (4,), unsigned_convert=True),
}
GENERIC = "generic"


def kernel_path(target) -> str:
    """The decode GEMV path ``target`` gets: ``avx512``, ``avx2``, ``neon`` or ``generic`` (the te GEMV)."""
    from tvm.target import codegen

    if target is None or target.kind.name != "llvm":
        return GENERIC
    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith("x86_64"):
        for name, feature in (("avx512", "avx512f"), ("avx2", "avx2")):
            if codegen.target_has_features(feature, target):
                return name
        return GENERIC
    if triple.startswith(("aarch64", "arm64")) and codegen.target_has_features("neon", target):
        return "neon"
    return GENERIC


def supports_word_gemv(fmt_name: str, n_in: int, target) -> bool:
    """Whether ``word_gemv`` serves this format and shape on ``target`` (a kernel path other than generic)."""
    if fmt_name not in FORMATS or n_in % GROUP:
        return False
    return kernel_path(target) in KERNEL_PATHS


def _inverse_place(packing: Packing, n, isa: VectorIsa):
    """``2 ** -place(n)`` for a (loop variable) value index ``n``."""
    place = lambda i: packing.place(i, isa.unsigned_convert)  # noqa: E731
    value = T.float32(2.0 ** -place(packing.per_word - 1))
    for i in reversed(range(packing.per_word - 1)):
        value = T.Select(n == i, T.float32(2.0 ** -place(i)), value)
    return value


def _word_sum(packing: Packing, x, b, w):
    """Sum of the inputs that the values of word ``w`` of block ``b`` multiply."""
    total = None
    for n in range(packing.per_word):
        term = x[0, b * GROUP + w * 4 + packing.offset(n)]
        total = term if total is None else total + term
    return total


def _chunks(words: int, widths: tuple[int, ...]) -> list[tuple[int, int]]:
    """(first word, lanes) of each vector of a row: the widest chunks first, then narrower ones."""
    out, start = [], 0
    for lanes in widths:
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
        if blocks <= 1:  # a chunk within one block (NEON's 4 words of a q8_0 block's 8)
            return T.Broadcast(params[o, b0].astype("float32"), lanes)
        values = params[o, T.Ramp(b0, 1, blocks)].astype(f"float32x{blocks}")
        return tirx.Shuffle([values] * per_block, [i // per_block for i in range(lanes)])

    d = per_lane(scale)
    if offset == "min":
        return d, per_lane(minimum)
    return d, (d * T.Broadcast(T.float32(-8), lanes) if offset == "-8d" else None)


def _chunk_sum(packing: Packing, isa: VectorIsa, xp, q32, o, first_word: int, lanes: int):
    """``sum_n xp[n] * (value n of each word, at its place)`` over one chunk of packed words."""
    words = q32[o, T.Ramp(first_word, 1, lanes)]
    total = None
    for n in range(packing.per_word):
        term = xp[n, T.Ramp(first_word, 1, lanes)] * packing.extract(words, n, lanes, isa.unsigned_convert)
        total = term if total is None else total + term
    return total


def _fold(vec, lanes: int, into_lanes: int):
    """Add the halves of a vector until ``into_lanes`` lanes are left (the last level first)."""
    while lanes > into_lanes:
        lanes //= 2
        vec = tirx.Shuffle([vec], list(range(lanes))) + tirx.Shuffle([vec], list(range(lanes, 2 * lanes)))
    return vec


def _row_value(packing: Packing, isa: VectorIsa, offset, xp, xs, q32, scale, minimum, o, words: int):
    """``out[o]`` as one expression: chunk vectors of each width summed, then folded to a scalar."""
    by_width: dict[int, object] = {}
    for first, lanes in _chunks(words, isa.widths):
        d, m = _block_params(packing, offset, scale, minimum, o, first, lanes)
        vec = d * _chunk_sum(packing, isa, xp, q32, o, first, lanes)
        if m is not None:
            vec = vec + m * xs[T.Ramp(first, 1, lanes)]
        by_width[lanes] = vec if lanes not in by_width else by_width[lanes] + vec
    total, width = None, 0
    for lanes in isa.widths:
        if lanes in by_width:
            total = by_width[lanes] if total is None else _fold(total, width, lanes) + by_width[lanes]
            width = lanes
    scalar = _fold(total, width, 1)
    return tirx.Shuffle([scalar], [0]) if width > 1 else scalar


def word_gemv(fmt_name: str, n_in: int, n_out: int, scale_dtype: str, swiglu: bool = False, path: str = "avx512"):
    """PrimFunc ``(x[1, n_in], q, scale[, min], out)`` for ``fmt_name`` in FORMATS: ``out = x @ W.T``
    of shape ``[1, n_out]``, or with ``swiglu`` ``silu(gate) * up`` of its halves, ``[1, n_out / 2]``.
    ``path`` is a key of KERNEL_PATHS (see ``kernel_path``)."""
    if path not in KERNEL_PATHS:
        raise ValueError(f"word_gemv has no {path!r} path; choose one of {', '.join(KERNEL_PATHS)}")
    packing, offset = FORMATS[fmt_name]
    isa = KERNEL_PATHS[path]
    groups, words, per_word = n_in // GROUP, n_in // packing.per_word, packing.per_word
    q_dtype = "int8" if packing.signed else "uint8"
    word_dtype = "int32" if packing.signed else "uint32"
    rows = n_out // 2 if swiglu else n_out
    tiles = (rows + O_TILE - 1) // O_TILE
    per_block = packing.words_per_block
    value_offset = packing.offset

    def row(xp, xs, q32, scale, minimum, o):
        return _row_value(packing, isa, offset, xp, xs, q32, scale, minimum, o, words)

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
                    xp[n, b * per_block + w] = x[0, b * GROUP + w * 4 + value_offset(n)] * _inverse_place(packing, n, isa)
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
