"""Between transformers' per-layer caches (``[1, kv_heads, tokens, head_dim]`` K and V) and a snapshot's
contiguous ``[layers, 2, tokens, kv_heads, head_dim]`` array; both hold K after RoPE."""

from __future__ import annotations

import numpy as np


def layers_to_array(layers) -> np.ndarray:
    """``[(k, v), ...]`` torch tensors of one sequence -> one float32 numpy array."""
    import torch

    stacked = torch.stack([torch.stack([k[0], v[0]]) for k, v in layers])  # [L, 2, heads, tokens, dim]
    return np.ascontiguousarray(stacked.transpose(2, 3).float().cpu().numpy())


def array_to_layers(data: np.ndarray, device) -> list:
    """The inverse of :func:`layers_to_array`: ``[(k, v), ...]`` of ``[1, heads, tokens, dim]`` on ``device``."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device).transpose(2, 3)  # [L, 2, h, n, d]
    return [(t[layer, 0][None].contiguous(), t[layer, 1][None].contiguous()) for layer in range(t.shape[0])]
