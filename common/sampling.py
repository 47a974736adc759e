"""Sampling parameters and the sampler (numpy, on the logits row the engine returns).

``SamplingParams`` is one class for the engine and the wire: the device's sampler, the cloud's
sampler and the ``sampling`` field of a ``prefill`` frame (:mod:`pdlink.common.protocol_messages`).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """How to pick the next token. ``temperature == 0`` means greedy (and ignores the rest); ``top_k == 0`` is off.

    Checked when built and when decoded from a frame: a bad value raises ``ValueError`` (msgspec
    reports it as a ``ValidationError`` while decoding) whose message gives the allowed range.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self):
        # NOTE: msgspec.Meta constraints are only checked while decoding; the engine builds these in Python
        # too (command line, sessions), so every rule lives here, where both paths run it.
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64) or None, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Draws tokens for one sequence; seeded, so a seed reproduces a whole generation."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray) -> int:
        """Pick a token id from a 1-D logits row."""
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / p.temperature
        if p.top_k:
            kth = np.partition(scaled, -p.top_k)[-p.top_k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, p.top_p) + 1)]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self._rng.choice(len(probs), p=probs))
