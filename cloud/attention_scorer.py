"""Prompt-token importance for the torch backend: the attention the last window of queries pays each token.

Forward pre-hooks on every attention module keep, for each tracked sequence, the rotated queries of
its last ``window`` positions (across prefill chunks, so chunking does not matter). After the prompt
is in the KV cache, :meth:`AttentionScorer.scores` recomputes those queries' attention over the
cached keys -- softmax per head, causal inside the window -- and sums it over heads, queries and
layers. Only the queries are extra work (a ``q_proj`` over ``window`` rows per layer and chunk); the
keys are the ones the prefill stored anyway.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np


class AttentionScorer:
    """Attention-mass scores of prompt positions for a transformers Llama-family model."""

    def __init__(self, model, torch):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self._torch, self._rotate = torch, apply_rotary_pos_emb
        self._attn = [layer.self_attn for layer in model.model.layers]
        self._windows: dict[int, int] = {}
        self._tails: dict[int, list] = {}  # seq id -> per layer: rotated queries [1, heads, <= window, dim]
        self._active: int | None = None
        for index, module in enumerate(self._attn):
            module.register_forward_pre_hook(self._hook(index), with_kwargs=True)

    def track(self, seq_id: int, window: int) -> None:
        """Keep the last ``window`` queries of ``seq_id`` from now on (call before its prefill)."""
        if window < 1:
            raise ValueError("window must be >= 1")
        self._windows[seq_id] = window
        self._tails[seq_id] = [None] * len(self._attn)

    def forget(self, seq_id: int) -> None:
        """Drop what was kept for ``seq_id`` (no error when it was not tracked)."""
        self._windows.pop(seq_id, None)
        self._tails.pop(seq_id, None)

    def is_tracked(self, seq_id: int) -> bool:
        return seq_id in self._windows

    @contextmanager
    def capturing(self, seq_id: int):
        """Within this block, forward passes belong to ``seq_id`` (a no-op for an untracked sequence)."""
        self._active = seq_id if seq_id in self._windows else None
        try:
            yield
        finally:
            self._active = None

    def _hook(self, layer: int):
        def keep_queries(module, args, kwargs):
            seq_id = self._active
            if seq_id is None:
                return None
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            window = self._windows[seq_id]
            hidden = hidden[:, -window:]
            q = module.q_proj(hidden).view(1, hidden.shape[1], -1, module.head_dim).transpose(1, 2)
            q, _ = self._rotate(q, q, cos[:, -window:], sin[:, -window:])
            prev = self._tails[seq_id][layer]
            q = q if prev is None else self._torch.cat([prev, q], dim=2)[:, :, -window:]
            self._tails[seq_id][layer] = q
            return None

        return keep_queries

    def scores(self, seq_id: int, cache, length: int) -> np.ndarray:
        """Attention mass on each of the ``length`` cached positions of ``seq_id`` (float64, sums to
        layers x heads x window queries). Raises ``ValueError`` when the sequence was not tracked."""
        tails = self._tails.get(seq_id)
        if tails is None or tails[0] is None:
            raise ValueError(f"sequence {seq_id} was not tracked through its prefill")
        torch = self._torch
        total = torch.zeros(length, dtype=torch.float64)
        with torch.inference_mode():
            for module, q, layer in zip(self._attn, tails, cache.layers):
                keys = layer.keys[:, :, :length].to(q.dtype)
                keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
                logits = (q @ keys.transpose(-1, -2)) * module.scaling  # [1, heads, w, length]
                w = q.shape[2]
                query_pos = torch.arange(length - w, length, device=q.device)[:, None]
                logits.masked_fill_(torch.arange(length, device=q.device)[None, :] > query_pos, float("-inf"))
                total += logits.softmax(dim=-1).sum(dim=(0, 1, 2)).double().cpu()
        return total.numpy()
