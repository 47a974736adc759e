"""The speed controller: shows buffered tokens at a steady pace instead of in network bursts.

Pure Python, no clock of its own: callers pass times (seconds on one monotonic clock). A token
arriving at ``a_i`` is shown at ``s_i = max(a_i, s_{i-1} + tau)``: the first token at once, later
ones no faster than one per ``tau``. While tokens are buffered the gap between shown tokens is
exactly ``tau``, so choosing ``tau <= max_gap_s`` bounds the gap; ``tau`` can be retuned as the
device's own progress becomes known (``set_pace``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shown(Generic[T]):
    """A released item and the time it is shown."""

    item: T
    arrival_s: float
    shown_s: float


class SpeedController(Generic[T]):
    """FIFO of arrived items released no faster than one per ``tau_s`` (see the module docstring)."""

    def __init__(self, tau_s: float, max_gap_s: float | None = None):
        if max_gap_s is not None and max_gap_s <= 0:
            raise ValueError("max_gap_s must be positive")
        self.max_gap_s = max_gap_s
        self._queue: deque[tuple[T, float]] = deque()
        self._last_shown_s: float | None = None
        self._not_before_s = float("-inf")
        self.tau_s = 0.0
        self.set_pace(tau_s)

    def set_pace(self, tau_s: float) -> None:
        """Change the pace; clamped to ``max_gap_s`` so buffered tokens never wait longer than that."""
        if tau_s < 0:
            raise ValueError("tau_s must be >= 0")
        self.tau_s = min(tau_s, self.max_gap_s) if self.max_gap_s is not None else tau_s

    def hold_until(self, t_s: float) -> None:
        """Show nothing before ``t_s`` (a held first token lets a buffer build up); ``-inf`` lifts the hold."""
        self._not_before_s = t_s

    @property
    def last_shown_s(self) -> float | None:
        """When the last released item was due (None: nothing released yet)."""
        return self._last_shown_s

    def push(self, item: T, arrival_s: float) -> None:
        """An item arrived (cloud token or local token), in order."""
        self._queue.append((item, arrival_s))

    @property
    def buffered(self) -> int:
        return len(self._queue)

    def next_release_s(self) -> float | None:
        """When the oldest buffered item is due, or None when nothing is buffered."""
        if not self._queue:
            return None
        arrival = max(self._queue[0][1], self._not_before_s)
        if self._last_shown_s is None:
            return arrival
        return max(arrival, self._last_shown_s + self.tau_s)

    def release_due(self, now_s: float) -> list[Shown[T]]:
        """Release every item due at ``now_s``; each gets its scheduled show time."""
        out: list[Shown[T]] = []
        while self._queue:
            due = self.next_release_s()
            if due > now_s:
                break
            item, arrival = self._queue.popleft()
            self._last_shown_s = due
            out.append(Shown(item, arrival, due))
        return out

    def clear(self) -> None:
        """Drop every buffered item (the answer ended before they were due)."""
        self._queue.clear()
