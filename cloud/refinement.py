"""Prompt refinement: which prompt tokens a device should keep, from the cloud's attention scores.

Pure numpy, no model: the backend scores every prompt position (the attention mass the last window
of queries puts on it, summed over heads and layers, as in SnapKV/H2O), and
:func:`select_kept_indices` turns the scores into the kept positions. The head of the prompt (chat
template, system prompt, the instruction that opens the user turn) and the last window (the question
and the assistant header) are always kept; the rest is filled with the best-scored positions after
smoothing the scores over a few neighbours, so kept tokens come in readable runs rather than alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW = 32  # queries whose attention scores the prompt; also always kept
DEFAULT_HEAD = 32  # leading prompt tokens always kept (template, system prompt, instruction)
DEFAULT_POOL = 7  # neighbours the scores are averaged over before picking


@dataclass(frozen=True)
class RefineSpec:
    """What a request asked for: keep ``keep_ratio`` of the prompt; score with the last ``window`` queries."""

    keep_ratio: float
    window: int = DEFAULT_WINDOW
    head: int = DEFAULT_HEAD

    def __post_init__(self):
        if not (0.0 < self.keep_ratio <= 1.0):
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.window < 1 or self.head < 0:
            raise ValueError("window must be >= 1 and head >= 0")


def select_kept_indices(scores: np.ndarray, spec: RefineSpec, pool: int = DEFAULT_POOL) -> list[int]:
    """The prompt positions to keep (strictly increasing), about ``keep_ratio * len(scores)`` of them.

    ``scores[i]`` is how much the last window attends to prompt position ``i`` (any non-negative scale).
    The first ``spec.head`` and the last ``spec.window`` positions are always kept, even when that is
    more than the ratio asks for.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    if n == 0 or scores.ndim != 1 or not np.all(np.isfinite(scores)):
        raise ValueError("scores must be a non-empty 1-D array of finite numbers")
    target = max(1, int(round(spec.keep_ratio * n)))
    forced = np.zeros(n, dtype=bool)
    forced[: spec.head] = True
    forced[max(0, n - spec.window):] = True
    free = target - int(forced.sum())
    if free > 0:
        smooth = _box_filter(scores, pool)
        smooth[forced] = -np.inf
        best = np.argpartition(-smooth, free - 1)[:free]
        forced[best] = True
    return np.flatnonzero(forced).tolist()


def _box_filter(x: np.ndarray, width: int) -> np.ndarray:
    """The mean of each position's ``width`` neighbours (fewer at the ends)."""
    if width <= 1:
        return x.copy()
    kernel = np.ones(width)
    total = np.convolve(x, kernel, mode="same")
    count = np.convolve(np.ones_like(x), kernel, mode="same")
    return total / count


def kept_fraction_of(kept: list[int], positions: range | list[int]) -> float:
    """The share of ``positions`` that ``kept`` retains (for fidelity checks such as a planted fact)."""
    positions = list(positions)
    if not positions:
        raise ValueError("no positions to check")
    return len(set(positions) & set(kept)) / len(positions)
