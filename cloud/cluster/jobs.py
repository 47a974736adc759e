"""What the gateway and the instances pass each other (plain frozen records: they cross Ray's wire as pickles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdlink.common.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class PrefillJob:
    """Prefill ``prompt`` and sample the first token."""

    key: str
    prompt: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: tuple[int, ...] = ()
    export_kv: bool = True  # False: the decode side re-prefills (the fallback; also the benchmark's peer)


@dataclass(frozen=True, slots=True)
class PrefillResult:
    """The first token and, when exported, the prompt's KV (``kv``: whatever the transfer layer carries)."""

    key: str
    token_id: int
    time_s: float
    reason: str | None  # a done reason when the request ended with its first token (eos), else None
    busy_s: float
    kv: Any = None
    kv_error: str = ""  # why no KV came along when it was asked for


@dataclass(frozen=True, slots=True)
class DecodeJob:
    """Go on generating after ``tokens`` (prompt + the leading tokens sent so far, ``first_index`` of them).

    ``kv`` holds the KV of the first ``len(tokens) - 1`` tokens when the prefill instance exported it; None,
    or a KV the instance cannot import, makes the instance re-prefill ``tokens`` itself (the fallback)."""

    key: str
    tokens: tuple[int, ...]
    first_index: int  # the protocol index of the first token this instance produces
    max_tokens: int  # tokens still owed
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: tuple[int, ...] = ()
    kv: Any = None


@dataclass(frozen=True, slots=True)
class DecodeBatch:
    """What ``poll`` hands back: new ``(index, token_id, time_s)`` tokens; ``reason`` once the request ended."""

    tokens: tuple[tuple[int, int, float], ...]
    reason: str | None = None
    busy_s: float = 0.0
    kv_path: str = "reprefill"  # kv (imported), failed (a KV came and could not be used: re-prefilled), reprefill
