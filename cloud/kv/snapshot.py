"""One sequence's KV cache as one contiguous buffer: :class:`KVSnapshot`.

Layout of ``data``: ``[num_layers, 2, num_tokens, num_kv_heads, head_dim]`` (K then V of each layer), C order,
so layer ``l`` starts at byte ``l * layer_nbytes`` and its V half at ``l * layer_nbytes + layer_nbytes // 2``:
every offset follows from the length, the kv heads, the head dim and the dtype (P/D-Serve's block-free
buffer). K is stored after RoPE, as both backends' caches hold it. ``checksum`` is xxh3-64 of ``data``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgspec
import numpy as np
import xxhash

DTYPES = ("float32", "float16", "bfloat16")
_HEADER_LEN = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 24


class KVSnapshotError(ValueError):
    """Bad snapshot metadata, a payload of the wrong size, or a checksum that does not match."""


def checksum_of(buffer) -> str:
    """xxh3-64 of a bytes-like object (or a C-contiguous array), as 16 hex digits."""
    return xxhash.xxh3_64_hexdigest(memoryview(buffer).cast("B"))


class KVHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything of a snapshot except its payload: what a receiver needs to reserve the buffer."""

    model_id: str
    token_ids: list[int]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    page_size: int
    checksum: str

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, len(self.token_ids), self.num_kv_heads, self.head_dim)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype in ("float16", "bfloat16") else 4

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.itemsize

    def check(self) -> "KVHeader":
        """Raise :class:`KVSnapshotError` naming the bad field; returns self."""
        if not self.model_id:
            raise KVSnapshotError("model_id is empty: name the model the KV came from")
        if not self.token_ids:
            raise KVSnapshotError("token_ids is empty: a snapshot covers at least one token")
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_size"):
            if getattr(self, name) < 1:
                raise KVSnapshotError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise KVSnapshotError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if len(self.checksum) != 16 or any(c not in "0123456789abcdef" for c in self.checksum):
            raise KVSnapshotError("checksum must be 16 lowercase hex digits (xxh3-64)")
        return self


_HEADER_DECODER = msgspec.json.Decoder(KVHeader)


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":  # numpy has none: carried as raw 16-bit words
        return np.dtype(np.uint16)
    return np.dtype(name)


@dataclass(frozen=True)
class KVSnapshot:
    """A sequence's KV (``header`` + contiguous ``data``). Build one with :meth:`build`."""

    header: KVHeader
    data: np.ndarray

    @classmethod
    def build(cls, *, model_id: str, token_ids, data: np.ndarray, page_size: int, dtype: str | None = None) -> "KVSnapshot":
        """Wrap ``data`` (``[layers, 2, tokens, kv_heads, head_dim]``) and compute its checksum."""
        data = np.ascontiguousarray(data)
        if data.ndim != 5 or data.shape[1] != 2:
            raise KVSnapshotError(f"data must be [layers, 2, tokens, kv_heads, head_dim], got shape {data.shape}")
        ids = [int(t) for t in token_ids]
        if data.shape[2] != len(ids):
            raise KVSnapshotError(f"data holds {data.shape[2]} tokens but token_ids has {len(ids)}")
        header = KVHeader(model_id=model_id, token_ids=ids, num_layers=data.shape[0], num_kv_heads=data.shape[3],
                          head_dim=data.shape[4], dtype=dtype or str(data.dtype), page_size=int(page_size),
                          checksum=checksum_of(data))
        return cls(header.check(), data)

    @classmethod
    def from_payload(cls, header: KVHeader, payload) -> "KVSnapshot":
        """A snapshot from a received header and payload; raises :class:`KVSnapshotError` on a size or
        checksum mismatch (the payload is not copied)."""
        header.check()
        view = memoryview(payload).cast("B")
        if view.nbytes != header.nbytes:
            raise KVSnapshotError(f"payload has {view.nbytes} bytes, the header says {header.nbytes}")
        got = checksum_of(view)
        if got != header.checksum:
            raise KVSnapshotError(f"checksum mismatch: payload {got}, header {header.checksum}")
        data = np.frombuffer(view, dtype=_numpy_dtype(header.dtype)).reshape(header.shape)
        return cls(header, data)

    @property
    def num_tokens(self) -> int:
        return len(self.header.token_ids)

    @property
    def layer_nbytes(self) -> int:
        return self.header.nbytes // self.header.num_layers

    def layer_offset(self, layer: int) -> int:
        """Byte offset of layer ``layer``'s K in the contiguous buffer (its V follows at ``+ layer_nbytes // 2``)."""
        if not 0 <= layer < self.header.num_layers:
            raise IndexError(f"layer {layer} outside 0..{self.header.num_layers - 1}")
        return layer * self.layer_nbytes

    def verify(self) -> None:
        """Raise :class:`KVSnapshotError` when ``data`` no longer matches the checksum."""
        got = checksum_of(np.ascontiguousarray(self.data))
        if got != self.header.checksum:
            raise KVSnapshotError(f"checksum mismatch: data {got}, header {self.header.checksum}")

    def to_bytes(self) -> bytes:
        """``u32 header length | header JSON | payload``."""
        head = msgspec.json.encode(self.header)
        return _HEADER_LEN.pack(len(head)) + head + np.ascontiguousarray(self.data).tobytes()

    @classmethod
    def from_bytes(cls, blob) -> "KVSnapshot":
        """Inverse of :meth:`to_bytes`; checks the header, the size and the checksum."""
        view = memoryview(blob).cast("B")
        if view.nbytes < _HEADER_LEN.size:
            raise KVSnapshotError("snapshot bytes are too short to hold a header")
        (n,) = _HEADER_LEN.unpack_from(view)
        if n > MAX_HEADER_BYTES or _HEADER_LEN.size + n > view.nbytes:
            raise KVSnapshotError(f"snapshot header length {n} is out of range")
        return cls.from_payload(decode_header(view[_HEADER_LEN.size:_HEADER_LEN.size + n]),
                                view[_HEADER_LEN.size + n:])


def decode_header(raw) -> KVHeader:
    """A checked :class:`KVHeader` from JSON bytes; raises :class:`KVSnapshotError`."""
    try:
        return _HEADER_DECODER.decode(raw).check()
    except msgspec.DecodeError as exc:
        raise KVSnapshotError(f"bad snapshot header: {exc}") from exc
