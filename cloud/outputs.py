"""What a scheduler step hands back, per request: a token, a refined prompt, or the end of the request.

The model worker passes these from its thread to the server; they are frozen, so nothing the worker
does later can change what the server reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Union

from pdlink.cloud.request import RequestStatus


@dataclass(frozen=True, slots=True)
class TokenOutput:
    """A request produced its token number ``index``."""

    key: Hashable
    index: int
    token_id: int
    time_s: float


@dataclass(frozen=True, slots=True)
class FinishedOutput:
    """A request ended inside a step (EOS, stop index reached, k tokens, backend error)."""

    key: Hashable
    status: RequestStatus
    num_tokens: int
    busy_s: float


@dataclass(frozen=True, slots=True)
class RefinedOutput:
    """A request's prompt was scored: the device may prefill only ``kept_indices`` (prompt positions)."""

    key: Hashable
    kept_indices: list[int]
    keep_ratio: float


Output = Union[TokenOutput, FinishedOutput, RefinedOutput]
