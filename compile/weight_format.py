"""Storage formats of weight matrices in a compiled package, keyed by name.

Every matrix is stored row-major as ``[out_features, in_features]`` (the HF / GGUF layout), with any
quantization blocks running along ``in_features``. A format knows three things:

* which arrays a matrix becomes (names, shapes, dtypes) -- ``array_specs``;
* how to produce them from float weights (``from_float``) or, bit for bit, from a GGUF tensor
  (``from_gguf``, when the GGUF already holds this exact block format);
* the tensor-expression that reads back one element ``W[o, k]`` inside a compiled kernel
  (``element``), so dequantization is fused into the kernel that consumes it.

Block formats (group size 32, like llama.cpp and MLC's ``q4f16_1``):

* ``q4_1``: ``w = d * q + m`` with 4-bit ``q``; per block an f16 scale ``d`` and an f16 minimum ``m``.
  The 16 bytes of a block keep GGUF's nibble order: byte ``j`` holds element ``j`` (low nibble) and
  element ``j + 16`` (high nibble).
* ``q4sym``: ``w = (q - 8) * d`` with 4-bit ``q``; same nibble order, one scale per block.
* ``q8_0``: ``w = d * q`` with int8 ``q``; one f16 scale per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

GROUP = 32
GGUF_Q4_1 = 3  # ggml type ids, fixed by the GGUF spec
GGUF_Q8_0 = 8


@dataclass(frozen=True)
class ArraySpec:
    """One stored array of a matrix: name suffix, shape for an ``[out, in]`` matrix, dtype."""

    suffix: str
    shape: Callable[[int, int], tuple[int, ...]]
    dtype: str


@dataclass(frozen=True)
class WeightFormat:
    """How one weight matrix is stored and read back (see the module docstring)."""

    name: str
    arrays: tuple[ArraySpec, ...]
    encode: Callable[[np.ndarray], dict[str, np.ndarray]]
    element: Callable  # (arrays: dict[str, te.Tensor], o, k) -> f32 PrimExpr
    gguf_type: int | None = None
    bits_per_weight: float = 32.0

    def array_specs(self, out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Stored arrays of an ``[out, in]`` matrix: ``{suffix: (shape, dtype)}``."""
        if self.gguf_type is not None or self.name.startswith("q"):
            if in_features % GROUP:
                raise ValueError(f"{self.name} needs in_features divisible by {GROUP}, got {in_features}")
        return {a.suffix: (a.shape(out_features, in_features), a.dtype) for a in self.arrays}

    def from_float(self, weight: np.ndarray) -> dict[str, np.ndarray]:
        """Encode a float ``[out, in]`` matrix into this format's arrays."""
        return self.encode(np.ascontiguousarray(weight, dtype=np.float32))

    def to_float(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Decode stored arrays back to a float32 ``[out, in]`` matrix (numpy reference of ``element``)."""
        return _DECODE[self.name](arrays)

    def from_gguf(self, raw: np.ndarray, ggml_type: int) -> dict[str, np.ndarray] | None:
        """Split a GGUF tensor's raw blocks (``[rows, bytes]``) into arrays, bit for bit.

        Returns None when the GGUF tensor is not stored in this format (the caller then
        dequantizes it and calls ``from_float``).
        """
        if self.gguf_type is None or ggml_type != self.gguf_type:
            return None
        return _SPLIT_GGUF[self.name](raw)


# --------------------------------------------------------------------------- encoders


def _encode_dense(dtype: str):
    return lambda w: {"weight": w.astype(dtype)}


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """``[out, in]`` 4-bit values -> ``[out, in/2]`` bytes in GGUF block order."""
    out, n = q.shape
    blocks = q.reshape(out, n // GROUP, 2, GROUP // 2).astype(np.uint8)
    return (blocks[:, :, 0, :] | (blocks[:, :, 1, :] << 4)).reshape(out, n // 2)


def _encode_q4_1(w: np.ndarray) -> dict[str, np.ndarray]:
    out, n = w.shape
    blocks = w.reshape(out, n // GROUP, GROUP)
    lo, hi = blocks.min(axis=2), blocks.max(axis=2)
    d = ((hi - lo) / 15.0).astype(np.float16)
    m = lo.astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 != 0)
    q = np.clip(np.round((blocks - m.astype(np.float32)[..., None]) * inv[..., None]), 0, 15)
    return {"q": _pack_nibbles(q.reshape(out, n)), "scale": d, "min": m}


def _encode_q4sym(scale_dtype: str):
    """Symmetric 4-bit, 16 levels ``q - 8`` in [-8, 7]: per block, the scale with the least squared
    error among candidates around ``amax / 8`` (round-to-nearest at each)."""

    def encode(w: np.ndarray) -> dict[str, np.ndarray]:
        out, n = w.shape
        blocks = w.reshape(out, n // GROUP, GROUP)
        signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=2)[..., None], axis=2)[..., 0]
        best_d = np.zeros(blocks.shape[:2], np.float32)
        best_err = np.full(blocks.shape[:2], np.inf, np.float32)
        for factor in np.linspace(0.75, 1.1, 15):
            d = (-signed_max / 8.0 * factor).astype(scale_dtype).astype(np.float32)
            inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
            q = np.clip(np.round(blocks * inv[..., None]), -8, 7)
            err = ((q * d[..., None] - blocks) ** 2).sum(axis=2)
            better = err < best_err
            best_d[better], best_err[better] = d[better], err[better]
        inv = np.divide(1.0, best_d, out=np.zeros_like(best_d), where=best_d != 0)
        q = np.clip(np.round(blocks * inv[..., None]), -8, 7) + 8
        return {"q": _pack_nibbles(q.reshape(out, n)), "scale": best_d.astype(scale_dtype)}

    return encode


def _encode_q8_0(w: np.ndarray) -> dict[str, np.ndarray]:
    out, n = w.shape
    blocks = w.reshape(out, n // GROUP, GROUP)
    d = (np.abs(blocks).max(axis=2) / 127.0).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 != 0)
    q = np.clip(np.round(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return {"q": q.reshape(out, n), "scale": d}


def _split_gguf_q4_1(raw: np.ndarray) -> dict[str, np.ndarray]:
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, 20)
    d = blocks[:, :, 0:2].copy().view(np.float16).reshape(rows, -1)
    m = blocks[:, :, 2:4].copy().view(np.float16).reshape(rows, -1)
    return {"q": blocks[:, :, 4:].reshape(rows, -1).copy(), "scale": d, "min": m}


def _split_gguf_q8_0(raw: np.ndarray) -> dict[str, np.ndarray]:
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, 34)
    d = blocks[:, :, 0:2].copy().view(np.float16).reshape(rows, -1)
    q = blocks[:, :, 2:].copy().view(np.int8).reshape(rows, -1)
    return {"q": q, "scale": d}


_SPLIT_GGUF = {"q4_1": _split_gguf_q4_1, "q8_0": _split_gguf_q8_0}


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    out, half = packed.shape
    blocks = packed.reshape(out, half * 2 // GROUP, GROUP // 2)
    return np.concatenate([blocks & 15, blocks >> 4], axis=2).reshape(out, half * 2).astype(np.float32)


def _group_values(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr.astype(np.float32), GROUP, axis=1)


_DECODE = {
    "f32": lambda a: a["weight"].astype(np.float32),
    "f16": lambda a: a["weight"].astype(np.float32),
    "q4sym_f16": lambda a: (_unpack_nibbles(a["q"]) - 8) * _group_values(a["scale"]),
    "q4sym_f32": lambda a: (_unpack_nibbles(a["q"]) - 8) * _group_values(a["scale"]),
    "q4_1": lambda a: _unpack_nibbles(a["q"]) * _group_values(a["scale"]) + _group_values(a["min"]),
    "q8_0": lambda a: a["q"].astype(np.float32) * _group_values(a["scale"]),
}


# --------------------------------------------------------------------------- kernel-side readers


def _nibble(q, o, k):
    """4-bit value of element ``k`` of row ``o`` (GGUF block order), as float32."""
    # In int32: a GEMV reading both halves of a block widens each byte once, then masks and shifts.
    byte = q[o, k // GROUP * (GROUP // 2) + k % (GROUP // 2)].astype("int32")
    shift = k % GROUP // (GROUP // 2) * 4
    return ((byte >> shift) & 15).astype("float32")


def _element_dense(a, o, k):
    return a["weight"][o, k].astype("float32")


def _element_q4_1(a, o, k):
    g = k // GROUP
    return _nibble(a["q"], o, k) * a["scale"][o, g].astype("float32") + a["min"][o, g].astype("float32")


def _element_q4sym(a, o, k):
    return (_nibble(a["q"], o, k) - 8.0) * a["scale"][o, k // GROUP].astype("float32")


def _element_q8_0(a, o, k):
    return a["q"][o, k].astype("float32") * a["scale"][o, k // GROUP].astype("float32")


def _half_bytes(o: int, i: int) -> tuple[int, int]:
    return (o, i // 2)


def _groups(o: int, i: int) -> tuple[int, int]:
    return (o, i // GROUP)


def _dense_shape(o: int, i: int) -> tuple[int, int]:
    return (o, i)


def _q4sym(name: str, scale_dtype: str) -> WeightFormat:
    return WeightFormat(
        name=name,
        arrays=(ArraySpec("q", _half_bytes, "uint8"), ArraySpec("scale", _groups, scale_dtype)),
        encode=_encode_q4sym(scale_dtype),
        element=_element_q4sym,
        bits_per_weight=4 + (16 if scale_dtype == "float16" else 32) / GROUP,
    )


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "f32": WeightFormat("f32", (ArraySpec("weight", _dense_shape, "float32"),), _encode_dense("float32"), _element_dense),
    "f16": WeightFormat(
        "f16", (ArraySpec("weight", _dense_shape, "float16"),), _encode_dense("float16"), _element_dense, bits_per_weight=16
    ),
    "q4sym_f16": _q4sym("q4sym_f16", "float16"),
    "q4sym_f32": _q4sym("q4sym_f32", "float32"),
    "q4_1": WeightFormat(
        "q4_1",
        (
            ArraySpec("q", _half_bytes, "uint8"),
            ArraySpec("scale", _groups, "float16"),
            ArraySpec("min", _groups, "float16"),
        ),
        _encode_q4_1,
        _element_q4_1,
        gguf_type=GGUF_Q4_1,
        bits_per_weight=5.0,
    ),
    "q8_0": WeightFormat(
        "q8_0",
        (ArraySpec("q", _dense_shape, "int8"), ArraySpec("scale", _groups, "float16")),
        _encode_q8_0,
        _element_q8_0,
        gguf_type=GGUF_Q8_0,
        bits_per_weight=8.5,
    ),
}
