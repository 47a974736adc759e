"""Read one sequence's KV out of the engine's paged cache, and write a received one into a fresh sequence.

Packages carry an exchange kernel in place of TVM's KV read-out (``compile/kv_exchange.py``; the manifest
says ``kv_cache.kv_io``): the builtin ``vm.builtin.attention_kv_cache_debug_get_kv`` then *swaps* a
staging buffer with the sequence's cached rows, layer by layer. Export swaps twice (copying the rows out
in between, so the cache is left as it was); import reserves the sequence's pages with
``begin_forward``/``end_forward`` and swaps once. The array is ``[num_layers, 2, tokens, kv_heads, head_dim]``
in the cache's dtype (the manifest's ``kv_cache.dtype``: float16 pages; packages built before hold float32; K
after RoPE), the layout of :class:`pdlink.cloud.kv.KVSnapshot`. A KV of another float dtype is converted on import
(float32 -> float16 rounds to the nearest half, as the cache itself would have stored it).
"""

from __future__ import annotations

import numpy as np


class KVExchange:
    """The exchange for one engine's cache; the engine calls it (not thread-safe, like the engine)."""

    def __init__(self, rt, num_layers: int, num_kv_heads: int, head_dim: int, dtype: str = "float32"):
        self._rt = rt
        self.dtype = np.dtype(dtype)
        self._swap = rt.get_global_func("vm.builtin.attention_kv_cache_debug_get_kv")
        self.row_shape = (num_kv_heads, head_dim)
        self.num_layers = num_layers

    def shape(self, num_tokens: int) -> tuple[int, ...]:
        return (self.num_layers, 2, num_tokens, *self.row_shape)

    def read(self, kv, seq_id: int, num_tokens: int) -> np.ndarray:
        """A copy of the sequence's ``num_tokens`` rows; the cache is unchanged afterwards."""
        half = (self.num_layers, num_tokens, *self.row_shape)
        k = self._rt.empty(half, self.dtype)  # staging: swapped in and back out, so never read uninitialised
        v = self._rt.empty(half, self.dtype)
        self._swap(kv, seq_id, 0, num_tokens, k, v)
        try:
            out = np.stack([np.from_dlpack(k), np.from_dlpack(v)], axis=1)
        finally:
            self._swap(kv, seq_id, 0, num_tokens, k, v)  # put the rows back
        return out

    def write(self, kv, seq_id: int, data: np.ndarray) -> None:
        """Put ``data`` into the rows of ``seq_id``, whose pages hold exactly ``data.shape[2]`` tokens."""
        k = self._rt.tensor(data[:, 0])
        v = self._rt.tensor(data[:, 1])
        self._swap(kv, seq_id, 0, data.shape[2], k, v)

    def check(self, data: np.ndarray, context_window: int) -> np.ndarray:
        """``data`` in this cache's dtype and shape; ``ValueError`` saying what differs."""
        data = np.asarray(data)
        if data.ndim != 5 or data.shape[:2] != (self.num_layers, 2) or tuple(data.shape[3:]) != self.row_shape:
            raise ValueError(f"KV of shape {data.shape} does not fit this model: expected "
                             f"{self.shape(-1)} with any token count (layers, K/V, tokens, kv heads, head dim)")
        if data.dtype.kind != "f":
            raise ValueError(f"KV dtype {data.dtype} is not a float dtype; this cache holds {self.dtype}")
        if not 1 <= data.shape[2] <= context_window:
            raise ValueError(f"{data.shape[2]} tokens of KV: must be 1..{context_window} (the context window)")
        return data.astype(self.dtype, copy=False)
