"""The pace on the real timeline: measured cloud arrivals and device progress, not only the profile's prediction.

Pure Python, no clock: the session core feeds it what happened (a cloud token arrived at ``t``, a local step of
``n`` tokens ran from ``t0`` to ``t1``) and asks it two things while cloud tokens are being shown:

- ``hold_s``: how long the *first* cloud token waits before it is shown. A stream whose tokens arrive slower
  than the gap bound cannot be shown within it from the first token on; holding the first token until enough
  are buffered keeps every later gap inside the bound (s_i = s_0 + i*B >= a_i = t0 + i*c needs
  ``s_0 - t0 >= (j-1)(c-B)``), and so does a hand-over the buffer would not last until
  (``s_0 + (j-1)B >= t_h - B``). TTFT pays for the hold; it never moves past the device's own first token.
- ``pace_s``: the speed controller's tau: the bound before the hand-over (the slowest allowed pace makes the
  buffer last longest; a buffer that would still run dry is spread up to ``STRETCH`` times it), then the
  device's measured decode time, a little faster, so the buffered tokens drain without a burst and later
  gaps are the device's own steps.

Both come from one forecast, ``handover``: the device's remaining prefill (its measured step cost, the
profile's until a step was timed) against the cloud's measured inter-arrival time (the mean of the last
gaps; the estimate until two tokens arrived), step by step as ``SessionCore`` computes (chunks of the
prompt's tail and the received tokens).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

_WINDOW = 8  # arrival gaps and steps the measurements look back on
_MAX_STEPS = 10_000  # bound on the forecast's loop
_SLOW_CLOUD_MARGIN = 0.4  # a cloud slower than the bound is held as if this much slower still (it drifts)
STRETCH = 1.5  # the slowest pace when the buffer cannot last at the bound (times the bound)
_MAX_MARGIN = 0.25  # the largest padding of a forecast hand-over (share of the time still to go)


@dataclass(frozen=True)
class Progress:
    """Where a pd request stands, as the core sees it (the forecast's starting point)."""

    prompt_tokens: int  # what the device computes of the prompt (fewer once refined)
    computed: int  # num_computed_tokens
    received: int  # cloud tokens received
    in_flight: int  # tokens of the local step running (0: none)
    in_flight_since_s: float | None
    cloud_limit: int  # k
    streaming: bool  # the cloud still sends tokens
    chunk: int
    max_tokens: int
    shown: int  # tokens shown so far
    last_shown_s: float | None


@dataclass
class PacePlanner:
    """Measurements and the forecast of one pd request (see the module docstring)."""

    bound_s: float  # the largest gap allowed (and the slowest pace)
    device_tpot_s: float  # the device's decode time per token (profile) until measured
    token_s: float  # the device's prefill seconds per token (profile) until measured
    cloud_tpot_s: float  # the cloud's time between tokens (estimate) until measured
    step_overhead_s: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    _prefill_steps: list[tuple[int, float]] = field(default_factory=list)  # (tokens, seconds)
    _decode_steps: list[float] = field(default_factory=list)

    # ------------------------------------------------------------------ measurements

    def on_arrival(self, t: float) -> None:
        """A cloud token arrived at ``t`` (in index order)."""
        self.arrivals.append(t)

    def on_step(self, num_tokens: int, started_s: float, ended_s: float, decode: bool) -> None:
        """A local step over ``num_tokens`` ran from ``started_s`` to ``ended_s``."""
        spent = max(0.0, ended_s - started_s)
        if decode:
            self._decode_steps = [*self._decode_steps[-_WINDOW + 1:], spent]
        else:
            self._prefill_steps = [*self._prefill_steps[-2 * _WINDOW + 1:], (num_tokens, spent)]

    def _recent_gaps(self) -> list[float]:
        recent = self.arrivals[-2 * _WINDOW - 1:]
        return [b - a for a, b in zip(recent, recent[1:])]

    def cloud_interval_s(self) -> float:
        """The cloud's time between tokens: the mean of the last measured gaps (a stall counts: the buffer must
        cover it), else the estimate."""
        gaps = self._recent_gaps()
        return statistics.fmean(gaps) if gaps else self.cloud_tpot_s

    def device_step_cost(self) -> tuple[float, float]:
        """``(overhead_s, seconds per token)`` of a local prefill step, from the measured steps: the rate from
        the long steps (the profile's until one ran), the fixed cost from the short ones (a host slower than
        the profile pays most of a short step whatever its length)."""
        long = [dt / n for n, dt in self._prefill_steps if n >= 64]
        per_token = statistics.median(long) if long else self.token_s
        short = [max(0.0, dt - n * per_token) for n, dt in self._prefill_steps if n < 64]
        overhead = max(self.step_overhead_s, statistics.median(short)) if short else self.step_overhead_s
        return overhead, per_token

    def measured_decode_s(self) -> float | None:
        """The median of the measured decode steps (None before one ran)."""
        return statistics.median(self._decode_steps) if self._decode_steps else None

    def device_decode_s(self) -> float:
        """The device's decode step: the median of the last ones, else the profile's."""
        measured = self.measured_decode_s()
        return self.device_tpot_s if measured is None else measured

    # ------------------------------------------------------------------ the forecast

    def handover(self, now_s: float, *, prompt_tokens: int, computed: int, received: int, in_flight: int,
                 in_flight_since_s: float | None, cloud_limit: int, streaming: bool, chunk: int,
                 max_tokens: int) -> tuple[float, int] | None:
        """``(t_h, j)``: when the device's KV will cover everything received (its first own token) and how
        many cloud tokens it keeps then; None when the cloud would make the whole answer first."""
        (overhead, per_token), c = self.device_step_cost(), max(self.cloud_interval_s(), 1e-4)
        last = self.arrivals[-1] if self.arrivals else now_s
        cap = min(cloud_limit, max_tokens)

        def arrived(t: float) -> int:
            if not streaming or not self.arrivals:
                return received
            return min(cap, max(received, len(self.arrivals) + int(max(0.0, t - last) / c)))

        t, done = now_s, computed
        if in_flight:
            t = max(now_s, (in_flight_since_s or now_s) + overhead + in_flight * per_token)
            done += in_flight
        for _ in range(_MAX_STEPS):
            got = arrived(t)
            if got >= max_tokens:
                return None
            pending = prompt_tokens + got - done
            if pending <= 0 and done >= prompt_tokens:
                return t, got
            n = min(chunk, max(pending, 1))
            t += overhead + n * per_token
            done += n
        return None

    def forecast_margin(self) -> float:
        """How unsure the forecast is, as a share of the time still to go: half the spread (coefficient of
        variation) of the cloud's recent gaps plus how far the device's measured prefill rate is off the
        profile's, at most ``_MAX_MARGIN``; 0 when everything runs as predicted."""
        gaps = self._recent_gaps()
        mean = statistics.fmean(gaps) if gaps else 0.0
        spread = statistics.pstdev(gaps) / mean if len(gaps) > 1 and mean > 0 else 0.0
        _, per_token = self.device_step_cost()
        off = abs(per_token / self.token_s - 1.0) if self.token_s > 0 else 0.0
        return min(_MAX_MARGIN, spread / 2 + off)

    # ------------------------------------------------------------------ the decisions

    def advise(self, now_s: float, at: Progress) -> tuple[float, float | None]:
        """``(pace_s, hold_until_s)`` before the hand-over; ``hold_until_s`` is None once a token is shown (a
        hold only ever delays the first). While fewer than three tokens arrived (two gaps measured) the first
        waits, at most until a bound before the device's own first token."""
        streaming = at.streaming and at.received < at.cloud_limit
        common = dict(prompt_tokens=at.prompt_tokens, computed=at.computed, in_flight=at.in_flight,
                      in_flight_since_s=at.in_flight_since_s, chunk=at.chunk, max_tokens=at.max_tokens)
        forecast = self.handover(now_s, received=at.received, cloud_limit=at.cloud_limit, streaming=streaming,
                                 **common)
        hold_until = None
        if at.shown == 0:
            alone = self.handover(now_s, received=0, cloud_limit=0, streaming=False, **common)
            latest = (alone[0] if alone else now_s) - self.bound_s
            cloud_tokens = min(at.cloud_limit, at.max_tokens)
            first = self.arrivals[0]
            measuring = streaming and len(self.arrivals) < min(3, at.cloud_limit)
            hold = latest if measuring else first + self.hold_s(now_s, first, forecast, latest, cloud_tokens)
            hold_until = max(first, hold)
        to_show = (forecast[1] if forecast is not None else min(at.cloud_limit, at.max_tokens)) - at.shown
        return self.pace_s(False, last_shown_s=at.last_shown_s, to_show=to_show, handover=forecast), hold_until

    def hold_s(self, now_s: float, first_arrival_s: float, handover: tuple[float, int] | None,
               latest_first_show_s: float, cloud_tokens: int) -> float:
        """How long the first cloud token waits (module docstring); at most until ``latest_first_show_s``.
        ``cloud_tokens``: how many the cloud makes when no hand-over is forecast (it makes the answer). The
        forecast hand-over and the cloud's interval are padded by ``forecast_margin``."""
        margin, b = self.forecast_margin(), self.bound_s
        c = self.cloud_interval_s() * (1 + max(_SLOW_CLOUD_MARGIN, margin))
        need = 0.0
        if handover is not None:
            t_h, shown_tokens = handover
            t_h += margin * max(0.0, t_h - now_s)
            need = t_h - first_arrival_s - shown_tokens * b
        else:
            shown_tokens = cloud_tokens
        if c > b:
            need = max(need, (shown_tokens - 1) * (c - b))
        return max(0.0, min(need, latest_first_show_s - first_arrival_s))

    def pace_s(self, handed_over: bool, *, last_shown_s: float | None = None, to_show: int = 0,
               handover: tuple[float, int] | None = None) -> float:
        """The speed controller's tau now (module docstring): the bound until the hand-over (the slowest pace
        within it lasts the buffer longest; a forecast too early would drain a faster one) -- unless even the
        bound would show the last cloud token (``to_show`` still to come) more than a bound before the
        forecast hand-over: then the rest is spread evenly up to ``STRETCH`` times the bound, many slightly
        longer gaps instead of one stall. After the hand-over: a little faster than the device's measured
        decode step, so the buffered tokens drain without a burst."""
        b = self.bound_s
        if handed_over:
            return max(0.0, min(b, 0.9 * self.device_decode_s()))
        if handover is None or last_shown_s is None or to_show < 1:
            return b
        spread = (handover[0] - last_shown_s) / (to_show + 1)
        return min(STRETCH * b, max(b, spread))
