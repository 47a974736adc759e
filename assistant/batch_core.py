"""The batching policy of the shared engine, as a pure core: which waiting engine calls run next, together.

Each request's session asks the engine for one step at a time (a prefill chunk or a one-token decode) and
waits for it. Calls from different requests wait here; ``next_step`` takes every waiting decode (up to
``max_batch``, oldest first) as one batched decode, or the oldest prefill chunk alone. Decodes and prefills
alternate while both wait, so a long prompt's prefill never stalls the others' streams for more than one
chunk, and a stream of decodes never starves a new request's prefill (continuous batching: a request joins
the decode batch at its first decode and leaves it when it ends).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

DECODE, PREFILL = "decode", "prefill"


@dataclass
class Work:
    """One waiting engine call: ``kind`` (decode / prefill), its sequence, its tokens; ``ticket`` is the
    shell's (where the result goes), never read here."""

    kind: str
    seq: int
    token_ids: tuple[int, ...]
    ticket: Any = None

    def __post_init__(self):
        if self.kind not in (DECODE, PREFILL):
            raise ValueError(f"kind must be {DECODE!r} or {PREFILL!r}, got {self.kind!r}")
        if not self.token_ids or (self.kind == DECODE and len(self.token_ids) != 1):
            raise ValueError("a decode takes exactly one token and a prefill at least one")


@dataclass(frozen=True)
class Step:
    """What the engine runs next: one batched decode over ``works`` or one prefill (a single work)."""

    kind: str
    works: tuple[Work, ...]


@dataclass
class BatchStats:
    """Counts for metrics: steps, decode rows, and how many decode steps ran each batch size."""

    decode_steps: int = 0
    prefill_steps: int = 0
    decode_rows: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class BatchCore:
    """Waiting decodes and prefills; ``next_step`` picks the next engine step (see the module docstring)."""

    def __init__(self, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._decodes: deque[Work] = deque()
        self._prefills: deque[Work] = deque()
        self._last_kind: str | None = None
        self.stats = BatchStats()

    def submit(self, work: Work) -> None:
        """A call waits for its turn. A sequence has at most one call waiting (its request waits on it)."""
        if any(w.seq == work.seq for w in (*self._decodes, *self._prefills)):
            raise ValueError(f"sequence {work.seq} already has a call waiting")
        (self._decodes if work.kind == DECODE else self._prefills).append(work)

    @property
    def waiting(self) -> int:
        return len(self._decodes) + len(self._prefills)

    @property
    def waiting_decodes(self) -> int:
        return len(self._decodes)

    def next_step(self) -> Step | None:
        """The next step to run (None when nothing waits); its works leave the queues."""
        if not self._decodes and not self._prefills:
            return None
        prefill_turn = bool(self._prefills) and (not self._decodes or self._last_kind == DECODE)
        if prefill_turn:
            step = Step(PREFILL, (self._prefills.popleft(),))
            self.stats.prefill_steps += 1
        else:
            n = min(self.max_batch, len(self._decodes))
            step = Step(DECODE, tuple(self._decodes.popleft() for _ in range(n)))
            self.stats.decode_steps += 1
            self.stats.decode_rows += n
            self.stats.batch_sizes[n] = self.stats.batch_sizes.get(n, 0) + 1
        self._last_kind = step.kind
        return step

    def drop(self, seq: int) -> list[Work]:
        """Take out every waiting call of a sequence (its request is gone); returns them."""
        gone = [w for w in (*self._decodes, *self._prefills) if w.seq == seq]
        self._decodes = deque(w for w in self._decodes if w.seq != seq)
        self._prefills = deque(w for w in self._prefills if w.seq != seq)
        return gone
