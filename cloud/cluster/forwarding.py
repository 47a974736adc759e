"""Where the gateway sends a request: on-demand forwarding, and the queue-report baseline (pure, no I/O).

:class:`Pools` holds every instance of every scenario group by role, with the gateway's own count of the
requests it has open on each (it knows them: it opened them) and, for the baseline only, the queue length
each instance last reported.

**On-demand forwarding** (P/D-Serve): :meth:`OnDemandRouter.offering` ranks the group's live prefill
instances by open requests and offers the request to the first; a busy instance rejects at once and the
next is offered; when every one has rejected, the round starts again after ``retry_s``, until the TTFT
budget is spent: then the request is given up (the gateway answers ``rejected``, the device falls back).
No decision reads a queue report.

**Queue-report routing** (the baseline): :meth:`QueueReportRouter.offering` sends the request to the
instance whose last *reported* queue is shortest; the instance queues it. Reports arrive every so often,
so between two reports every request goes to the same "shortest" instance.

The shell drives an offering: ``next(now)`` gives an :class:`Offer`, a :class:`Wait` or a
:class:`GiveUp`; it reports the answer with ``accepted(name)`` / ``rejected(name)`` / ``died(name)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

PREFILL, DECODE = "prefill", "decode"


@dataclass(slots=True)
class InstanceState:
    """One instance as the gateway sees it."""

    name: str
    group: str
    role: str
    open: int = 0  # requests the gateway has open on it
    alive: bool = True
    reported_queue: int = 0  # the baseline's input: the last queue length the instance reported
    reported_at: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Offer:
    instance: str


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    message: str


Decision = Union[Offer, Wait, GiveUp]


class Pools:
    """Every instance by (group, role); ``instances`` are ``(name, group, role)`` triples."""

    def __init__(self, instances: Iterable[tuple[str, str, str]]):
        self.by_name: dict[str, InstanceState] = {}
        for name, group, role in instances:
            if role not in (PREFILL, DECODE):
                raise ValueError(f"instance {name}: role must be {PREFILL!r} or {DECODE!r}, got {role!r}")
            if name in self.by_name:
                raise ValueError(f"instance name {name!r} is used twice")
            self.by_name[name] = InstanceState(name, group, role)

    def groups(self) -> list[str]:
        return sorted({s.group for s in self.by_name.values()})

    def members(self, group: str, role: str) -> list[InstanceState]:
        return [s for s in self.by_name.values() if s.group == group and s.role == role]

    def candidates(self, group: str, role: str) -> list[InstanceState]:
        """Live instances of the group's pool, fewest open requests first (ties by name)."""
        return sorted((s for s in self.members(group, role) if s.alive), key=lambda s: (s.open, s.name))

    def least_loaded(self, group: str, role: str, exclude: Iterable[str] = ()) -> str | None:
        """The live instance with the fewest open requests, or None."""
        skip = set(exclude)
        return next((s.name for s in self.candidates(group, role) if s.name not in skip), None)

    def opened(self, name: str) -> None:
        self.by_name[name].open += 1

    def closed(self, name: str) -> None:
        state = self.by_name[name]
        state.open = max(0, state.open - 1)

    def died(self, name: str) -> None:
        """The instance is gone: no more offers to it; its open requests are the shell's to re-place."""
        state = self.by_name[name]
        state.alive, state.open = False, 0

    def report(self, name: str, queue_length: int, at_s: float) -> None:
        state = self.by_name[name]
        state.reported_queue, state.reported_at = queue_length, at_s


class Offering:
    """One request's way to a prefill instance of ``group`` (on-demand forwarding; see the module doc)."""

    def __init__(self, pools: Pools, group: str, now: float, budget_s: float, retry_s: float):
        self.pools, self.group, self.deadline, self.retry_s = pools, group, now + budget_s, retry_s
        self._tried: set[str] = set()
        self.offers = self.rejections = 0

    def next(self, now: float) -> Decision:
        if not self.pools.candidates(self.group, PREFILL):
            return GiveUp(f"no live prefill instance in group {self.group!r}")
        if now >= self.deadline:
            return GiveUp(f"every prefill instance of group {self.group!r} stayed busy for the TTFT budget "
                          f"({self.offers} offers, {self.rejections} rejected)")
        for state in self.pools.candidates(self.group, PREFILL):
            if state.name not in self._tried:
                self._tried.add(state.name)
                self.offers += 1
                return Offer(state.name)
        self._tried.clear()  # every live candidate said busy: a new round after a short pause
        return Wait(min(self.retry_s, self.deadline - now))

    def accepted(self, name: str) -> None:
        self.pools.opened(name)

    def rejected(self, name: str) -> None:
        self.rejections += 1

    def died(self, name: str) -> None:
        self.pools.died(name)


class OnDemandRouter:
    """P/D-Serve's on-demand forwarding upon rejection."""

    name = "on_demand"

    def __init__(self, pools: Pools, budget_s: float, retry_s: float = 0.02):
        if not budget_s > 0 or not retry_s > 0:
            raise ValueError("the TTFT budget and the retry pause must be > 0 seconds")
        self.pools, self.budget_s, self.retry_s = pools, budget_s, retry_s

    def offering(self, group: str, now: float, budget_s: float | None = None) -> Offering:
        """A new request's offering (``budget_s``: this one's budget, e.g. what is left after a fault)."""
        return Offering(self.pools, group, now, self.budget_s if budget_s is None else budget_s, self.retry_s)


class ReportedOffering(Offering):
    """The baseline's way: the shortest *reported* queue, each live instance at most once, never waiting."""

    def next(self, now: float) -> Decision:
        ranked = sorted((s for s in self.pools.candidates(self.group, PREFILL) if s.name not in self._tried),
                        key=lambda s: (s.reported_queue, s.name))
        if not ranked:
            return GiveUp(f"every prefill instance of group {self.group!r} refused the request (queues full)"
                          if self._tried else f"no live prefill instance in group {self.group!r}")
        self._tried.add(ranked[0].name)
        self.offers += 1
        return Offer(ranked[0].name)


class QueueReportRouter:
    """The comparison baseline: routes on periodically reported queue lengths (instances keep a queue)."""

    name = "queue_report"

    def __init__(self, pools: Pools):
        self.pools = pools

    def offering(self, group: str, now: float, budget_s: float | None = None) -> Offering:
        return ReportedOffering(self.pools, group, now, float("inf"), 1.0)


ROUTERS = (OnDemandRouter.name, QueueReportRouter.name)
