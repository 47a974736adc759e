"""The cloud as the simulator sees it: a replaceable component behind one small interface.

A device's request reaches the cloud as a :class:`CloudRequest` (``submit``, at the moment it arrives there,
i.e. after the uplink delay); the cloud answers through the request's :class:`CloudClient` callbacks at its
own simulated time (the link adds the downlink delay): ``on_accepted`` or ``on_rejected`` first, then
``on_token`` per leading token and one ``on_done``. ``stop`` is the device's stop message arriving. Every
implementation owns its simpy processes; the simulation builds it from a factory ``env -> CloudModel``,
so a cluster (gateway, prefill and decode pools) plugs in where ``BatchingCloud`` does today.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Hashable, Protocol


class CloudStatus(Enum):
    """A cloud request's state; finished states come last (``status.finished`` is one comparison)."""

    WAITING = 0  # accepted, no prompt token computed yet
    PREFILLING = 1
    DECODING = 2
    REJECTED = 3
    FINISHED = 4

    @property
    def finished(self) -> bool:
        return self.value >= CloudStatus.REJECTED.value


class CloudClient(Protocol):
    """What the cloud tells one request's device (called at the cloud's simulated time)."""

    def on_accepted(self, estimated_ttft_s: float) -> None: ...

    def on_rejected(self, reason: str) -> None: ...

    def on_token(self, index: int) -> None: ...

    def on_done(self, reason: str, busy_s: float) -> None: ...


@dataclass(eq=False)
class CloudRequest:
    """One request at the cloud: its size, its progress and what it cost (accelerator seconds)."""

    key: Hashable
    prompt_tokens: int
    max_tokens: int  # leading tokens the device asked for (k)
    num_computed_tokens: int = 0  # prompt tokens in the cloud's KV cache
    num_output_tokens: int = 0
    stop_after: int | None = None
    busy_s: float = 0.0
    status: CloudStatus = CloudStatus.WAITING
    arrival_s: float = 0.0
    first_token_s: float | None = None
    finish_s: float | None = None
    done_reason: str | None = None
    extra: dict = field(default_factory=dict)  # what an implementation wants to keep per request

    @property
    def remaining_prefill(self) -> int:
        return self.prompt_tokens - self.num_computed_tokens


class CloudModel(ABC):
    """A simulated cloud (see the module docstring)."""

    @abstractmethod
    def submit(self, request: CloudRequest, client: CloudClient) -> None:
        """The request arrived: accept (``client.on_accepted``) or reject (``client.on_rejected``) it, now or
        later; once accepted, stream its tokens and end with ``client.on_done``."""

    @abstractmethod
    def stop(self, key: Hashable, after_index: int) -> None:
        """The device's stop arrived: no token after ``after_index`` (-1: cancel). Unknown or finished keys are
        ignored (the stop crossed the request's end)."""

    def stats(self) -> dict:
        """What the run cost the cloud (busy seconds, steps, rejections, peak load), for the report."""
        return {}
