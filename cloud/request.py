"""One request inside the cloud scheduler: its status, its progress and its tokens.

Only :mod:`pdlink.cloud.scheduler` changes a request (``_move``, ``_append_output``, the counters);
everything else reads it. All status transitions are listed in ``_TRANSITIONS``.
"""

from __future__ import annotations

import enum
from typing import Hashable, Sequence

from pdlink.cloud.refinement import RefineSpec
from pdlink.common.sampling import Sampler, SamplingParams


class RequestStatus(enum.IntEnum):
    """Ordered: finished statuses sort after the live ones, so ``status.finished`` is one comparison."""

    WAITING = 0  # admitted, no KV cache yet
    PREFILLING = 1  # has a backend sequence; num_computed_tokens < prompt length
    DECODING = 2  # prompt in the cache; owes leading tokens
    FINISHED_EOS = 3
    FINISHED_STOPPED = 4
    FINISHED_LENGTH = 5
    FINISHED_CANCELLED = 6
    FINISHED_DISCONNECTED = 7
    FINISHED_ERROR = 8

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_EOS

    @property
    def done_reason(self) -> str | None:
        """The protocol's ``done.reason`` for a finished status (None while live)."""
        return _DONE_REASONS.get(self)


_R = RequestStatus
_DONE_REASONS = {_R.FINISHED_EOS: "eos", _R.FINISHED_STOPPED: "stopped", _R.FINISHED_LENGTH: "max_leading_tokens",
                 _R.FINISHED_CANCELLED: "cancelled", _R.FINISHED_DISCONNECTED: "disconnected",
                 _R.FINISHED_ERROR: "error"}
_FINISHED = frozenset(s for s in _R if s.finished)
_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    _R.WAITING: frozenset({_R.PREFILLING}) | _FINISHED,
    _R.PREFILLING: frozenset({_R.DECODING}) | _FINISHED,  # k == 1 finishes straight from the prefill
    _R.DECODING: _FINISHED,
    **{s: frozenset() for s in _FINISHED},
}


class Request:
    """A prompt, the number of leading tokens owed (``max_tokens`` = k) and how far it got.

    ``num_computed_tokens`` counts tokens in the backend's KV cache: prompt chunks and fed-back
    output tokens advance it alike. ``key`` is the caller's handle (any hashable, unique while live).
    """

    __slots__ = ("key", "_prompt", "max_tokens", "stop_token_ids", "sampler", "arrival_s", "_status",
                 "num_computed_tokens", "_output", "stop_after", "seq_id", "busy_s", "first_token_s", "finish_s",
                 "refine")

    def __init__(self, key: Hashable, prompt_token_ids: Sequence[int], max_tokens: int,
                 sampling: SamplingParams | None = None, stop_token_ids: Sequence[int] = (), arrival_s: float = 0.0,
                 refine: RefineSpec | None = None):
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        self.key = key
        self._prompt = tuple(int(t) for t in prompt_token_ids)
        self.max_tokens = int(max_tokens)
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.sampler = Sampler(sampling or SamplingParams())
        self.arrival_s = arrival_s
        self._status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self._output: list[int] = []
        self.stop_after: int | None = None  # the client's stop index: tokens 0..stop_after are still owed
        self.seq_id: int | None = None
        self.busy_s = 0.0  # this request's share of the backend time
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.refine = refine  # score the prompt when its prefill ends, and say which tokens to keep

    @property
    def status(self) -> RequestStatus:
        return self._status

    @property
    def prompt_token_ids(self) -> tuple[int, ...]:
        return self._prompt

    @property
    def output_token_ids(self) -> tuple[int, ...]:
        return tuple(self._output)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self._prompt)

    @property
    def num_output_tokens(self) -> int:
        return len(self._output)

    @property
    def remaining_prefill(self) -> int:
        """Prompt tokens not yet in the KV cache."""
        return max(0, len(self._prompt) - self.num_computed_tokens)

    @property
    def token_limit(self) -> int:
        """Tokens this request may still produce in all: k, or fewer after a ``stop``."""
        return self.max_tokens if self.stop_after is None else min(self.max_tokens, self.stop_after + 1)

    def end_status(self) -> RequestStatus | None:
        """The finished status the outputs so far call for (eos, stopped, k reached), or None.
        The order matches the protocol's ``ServerConnection.finish_reason``."""
        if self._output and self._output[-1] in self.stop_token_ids:
            return RequestStatus.FINISHED_EOS
        if self.stop_after is not None and len(self._output) > self.stop_after:
            return RequestStatus.FINISHED_STOPPED
        if len(self._output) >= self.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _move(self, new: RequestStatus) -> None:
        if new not in _TRANSITIONS[self._status]:
            raise RuntimeError(f"request {self.key!r}: {self._status.name} -> {new.name} is not a valid transition")
        self._status = new

    def _append_output(self, token_id: int) -> int:
        self._output.append(int(token_id))
        return len(self._output) - 1

    def __repr__(self) -> str:
        return (f"Request({self.key!r}, {self._status.name}, prompt={len(self._prompt)}, "
                f"computed={self.num_computed_tokens}, out={len(self._output)}/{self.max_tokens})")
