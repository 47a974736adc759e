"""Kept conversations: sequences whose KV cache the next turn can start from (prefix reuse on token ids).

After a request ends, its sequence (prompt + answer in the KV cache) is kept here. A new request takes the
kept sequence sharing the longest leading run of token ids with its prompt; the session then rolls it back
to that common prefix and prefills only the rest. The least recently used entry is evicted when the engine
needs room or more than ``capacity`` are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from pdlink.edge.session import common_prefix_length


@dataclass(frozen=True)
class Reuse:
    """A kept sequence a request starts from: ``ids`` are in its KV cache, ``shared`` of them lead the prompt;
    with ``fork`` the sequence stays kept and the request runs on a fork of its first ``shared`` tokens."""

    seq: int
    ids: list[int]
    shared: int
    fork: bool


class PrefixCache:
    """Up to ``capacity`` kept sequences, least recently used first; ``free(seq)`` releases one's KV pages."""

    max_unshared = 4  # a kept sequence that differs in no more than its last few tokens is taken over

    def __init__(self, capacity: int, free: Callable[[int], None], min_shared_tokens: int = 4):
        if capacity < 0 or min_shared_tokens < 1:
            raise ValueError("capacity must be >= 0 and min_shared_tokens >= 1")
        self.capacity, self.free, self.min_shared_tokens = capacity, free, min_shared_tokens
        self._kept: OrderedDict[int, list[int]] = OrderedDict()  # seq -> the ids in its KV cache
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, prompt_ids: list[int]) -> Reuse | None:
        """The kept sequence sharing the most leading tokens with ``prompt_ids`` (None when none shares at least
        ``min_shared_tokens``). A sequence the prompt continues (all but ``max_unshared`` of its tokens shared:
        the conversation's next turn) leaves the cache; one sharing less (another conversation with the same
        system prompt) stays kept, and the caller forks it (``Reuse.fork``)."""
        best, shared = None, 0
        for seq, ids in self._kept.items():
            n = common_prefix_length(ids, prompt_ids)
            if n > shared:
                best, shared = seq, n
        if best is None or shared < self.min_shared_tokens:
            self.misses += 1
            return None
        self.hits += 1
        ids = self._kept[best]
        if len(ids) - shared <= self.max_unshared:
            return Reuse(best, self._kept.pop(best), shared, fork=False)
        self._kept.move_to_end(best)
        return Reuse(best, ids[:shared], shared, fork=True)

    def put(self, seq: int, token_ids: list[int]) -> None:
        """Keep a finished request's sequence; evicts the oldest beyond ``capacity``."""
        self._kept[seq] = list(token_ids)
        while len(self._kept) > self.capacity:
            self.evict_one()

    def evict_one(self) -> bool:
        """Free the least recently kept sequence; False when none is kept."""
        if not self._kept:
            return False
        seq, _ = self._kept.popitem(last=False)
        self.free(seq)
        return True

    def clear(self) -> None:
        while self.evict_one():
            pass
