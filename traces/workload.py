"""A workload: the requests of one trace, in arrival order, and the ways to reshape them for a run (arrival-rate
scaling, sampling, filtering by prompt length)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from pdlink.traces.azure import load_azure_csv
from pdlink.traces.location import NAMED_TRACES, trace_path
from pdlink.traces.mooncake import load_mooncake_jsonl
from pdlink.traces.request import TraceRequest

# File suffix -> loader; named traces resolve to files first.
LOADERS: dict[str, Callable[[str | Path], list[TraceRequest]]] = {
    ".csv": load_azure_csv,
    ".jsonl": load_mooncake_jsonl,
}


@dataclass(frozen=True)
class Workload:
    """Requests of one trace in arrival order (``name`` says where they came from). Every reshaping method returns
    a new Workload whose first request arrives at 0 s."""

    name: str
    requests: tuple[TraceRequest, ...]

    def __post_init__(self):
        object.__setattr__(self, "requests", tuple(self.requests))
        arrivals = [r.arrival_s for r in self.requests]
        if any(b < a for a, b in zip(arrivals, arrivals[1:])):
            raise ValueError("requests must be in arrival order (sort them by arrival_s)")

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self):
        return iter(self.requests)

    @property
    def duration_s(self) -> float:
        """Seconds from the first arrival to the last."""
        return self.requests[-1].arrival_s - self.requests[0].arrival_s if self.requests else 0.0

    @property
    def rate_rps(self) -> float | None:
        """Mean arrival rate (requests per second); None with fewer than two requests or a zero duration."""
        return (len(self) - 1) / self.duration_s if len(self) > 1 and self.duration_s > 0 else None

    def scale_rate(self, factor: float) -> Workload:
        """The same requests arriving ``factor`` times as fast (arrival times divided by ``factor``: 2 compresses
        the trace to half its duration, 0.5 stretches it to twice)."""
        if not factor > 0:
            raise ValueError(f"the rate factor must be > 0, got {factor}")
        return self._rebased(self.requests, f"{self.name} x{factor:g} rate", 1.0 / factor)

    def at_rate(self, rate_rps: float) -> Workload:
        """The same requests with arrival times scaled so the mean rate is ``rate_rps``. Raises ValueError when
        the workload has no rate (fewer than two requests or all arriving at once)."""
        if self.rate_rps is None:
            raise ValueError("the workload has no arrival rate to scale (fewer than two distinct arrival times)")
        return self.scale_rate(rate_rps / self.rate_rps)

    def poisson(self, seed: int = 0) -> Workload:
        """The same requests in the same order, re-timed as a Poisson process (seeded exponential gaps) at the
        workload's mean rate: the load without the trace's bursts. Raises ValueError when there is no rate."""
        if self.rate_rps is None:
            raise ValueError("the workload has no arrival rate to re-time (fewer than two distinct arrival times)")
        rng, t, times = random.Random(seed), 0.0, []
        for _ in self.requests:
            times.append(t)
            t += rng.expovariate(self.rate_rps)
        return Workload(f"{self.name} poisson seed {seed}",
                        tuple(replace(r, arrival_s=a) for r, a in zip(self.requests, times)))

    def first(self, n: int) -> Workload:
        """The first ``n`` requests (all of them when there are fewer)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self._rebased(self.requests[:n], f"{self.name} first {n}")

    def sample(self, n: int, seed: int = 0) -> Workload:
        """``n`` requests drawn at random (seeded, without replacement), kept in arrival order. Raises ValueError
        when the workload has fewer than ``n`` requests."""
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot sample {n} of {len(self)} requests")
        picks = sorted(random.Random(seed).sample(range(len(self)), n))
        return self._rebased([self.requests[i] for i in picks], f"{self.name} sample {n} seed {seed}")

    def filter_input(self, min_tokens: int = 0, max_tokens: int | None = None) -> Workload:
        """Requests whose prompt has ``min_tokens`` <= input_tokens <= ``max_tokens`` (no upper bound when None);
        e.g. ``filter_input(min_tokens=4096)`` keeps the long prompts."""
        if max_tokens is not None and max_tokens < min_tokens:
            raise ValueError(f"max_tokens {max_tokens} is below min_tokens {min_tokens}")
        kept = [r for r in self.requests
                if r.input_tokens >= min_tokens and (max_tokens is None or r.input_tokens <= max_tokens)]
        bounds = f"{min_tokens}..{'' if max_tokens is None else max_tokens}"
        return self._rebased(kept, f"{self.name} input {bounds}")

    def _rebased(self, requests, name: str, time_scale: float = 1.0) -> Workload:
        start = requests[0].arrival_s if requests else 0.0
        return Workload(name, tuple(replace(r, arrival_s=(r.arrival_s - start) * time_scale) for r in requests))


def load_trace(trace: str | Path, traces_dir: str | Path | None = None) -> Workload:
    """A named trace (``azure_code``, ``mooncake``; see :data:`~pdlink.traces.location.NAMED_TRACES`) from
    ``traces_dir`` (else ``$PDLINK_TRACES_DIR``, else ``../shared/traces``), or any ``.csv`` (Azure) / ``.jsonl``
    (Mooncake) file. Raises FileNotFoundError (what is missing and where to get it), ValueError for an unknown
    file type and :class:`~pdlink.traces.format_error.TraceFormatError` on a malformed row."""
    path = trace_path(trace, traces_dir)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ValueError(f"{path}: unknown trace format {path.suffix!r}; expected one of {sorted(LOADERS)}")
    name = trace if isinstance(trace, str) and trace in NAMED_TRACES else path.name
    return Workload(name, tuple(loader(path)))
