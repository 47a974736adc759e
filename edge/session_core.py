"""One P/D-Device request as a pure state machine: no I/O, no clock, no engine.

The asyncio shell (``pdlink.edge.session``) feeds it what happened -- a cloud token arrived, a local
compute step finished, the cloud failed -- with the time on one monotonic clock, and asks it what to do
next: which tokens to compute locally (``next_compute``), what to tell the cloud (``messages_to_send``),
which tokens to show now (``release_due``).

The answer is one list of tokens. Cloud tokens are committed as they arrive (in index order) and go
through the speed controller; the local engine computes ``prompt + answer`` with a single progress
counter, ``num_computed_tokens``, so the prompt and the received cloud tokens take the same path
(prefill chunks). When the local KV covers everything committed, the logits of that step give the
next token: the device takes over (hand-over at ``j`` = cloud tokens kept), asks the cloud to stop
after index ``j - 1``, and commits its own tokens from then on. The device never decodes a token it
already received; a cloud token arriving after the hand-over is dropped. Device-only mode is the
same machine with the cloud switched off. A refined prompt from the cloud (``on_refined_prompt``)
shortens what is left of the local prompt prefill; the answer path is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pdlink.common.protocol_messages import DoneReason
from pdlink.common.reasons import FinishReason
from pdlink.edge.fallback import Fallback
from pdlink.edge.pace_planner import STRETCH, Progress
from pdlink.edge.session_settings import CloudPlan
from pdlink.edge.speed_controller import SpeedController


class SessionState(Enum):
    """Where local computation stands; every transition is listed in ``_TRANSITIONS``."""

    PREFILLING = "prefilling"  # local prefill of the prompt (the cloud may be streaming meanwhile)
    CATCHING_UP = "catching_up"  # prompt in the KV cache; prefilling received cloud tokens
    DECODING = "decoding"  # the device produces the tokens (after hand-over, on fallback, device mode)
    FINISHED = "finished"  # the answer is complete (tokens may still wait to be shown)


class CloudState(Enum):
    """The cloud request, as the device sees it."""

    OFF = "off"  # device mode, or the settings chose not to use the cloud
    WAITING = "waiting"  # request sent, no token yet
    STREAMING = "streaming"
    RELEASED = "released"  # stopped or cancelled by us, or it finished its k tokens
    FAILED = "failed"  # unreachable, refused, rejected, dropped: the device goes on alone


_S = SessionState
_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    _S.PREFILLING: frozenset({_S.CATCHING_UP, _S.DECODING, _S.FINISHED}),
    _S.CATCHING_UP: frozenset({_S.DECODING, _S.FINISHED}),
    _S.DECODING: frozenset({_S.FINISHED}),
    _S.FINISHED: frozenset(),
}


@dataclass(frozen=True)
class Compute:
    """Run these tokens through the local engine: a prefill chunk, or one decode step (``decode``)."""

    token_ids: tuple[int, ...]
    decode: bool


@dataclass(frozen=True)
class StopCloud:
    """Tell the cloud: no token after ``after_index`` (``-1``: cancel the request)."""

    after_index: int


@dataclass(frozen=True)
class ShownToken:
    """A token released to the user."""

    index: int
    token_id: int
    origin: str  # "cloud" or "device"
    arrival_s: float
    shown_s: float


class SessionCore:
    """The state machine of one request (see the module docstring)."""

    def __init__(self, prompt_ids: list[int], *, max_tokens: int, stop_token_ids: set[int], chunk_size: int,
                 pace_s: float, max_gap_s: float | None, use_cloud: bool, device_compute: bool = True,
                 cloud_limit: int | None = None, plan: CloudPlan | None = None, fallback: str | None = None,
                 num_cached_tokens: int = 0):
        """``use_cloud=False``: device mode (``fallback`` says why, when the settings chose it).
        ``device_compute=False``: cloud mode (the cloud makes every token; the prompt may be empty then, when
        only the cloud tokenizes it). ``cloud_limit``: the k the cloud was asked for; ``plan``: the pd
        decisions still to make. ``num_cached_tokens``: leading prompt tokens already in the device's KV
        cache (a conversation's earlier turns)."""
        if not (use_cloud or device_compute):
            raise ValueError("a session needs the cloud, the device, or both")
        if device_compute and not 0 <= num_cached_tokens < len(prompt_ids):
            raise ValueError("the prompt needs at least one token the device has not computed yet")
        self.prompt = list(prompt_ids)
        self.max_tokens, self.stop_token_ids, self.chunk_size = max_tokens, set(stop_token_ids), chunk_size
        self.answer: list[int] = []
        self.origins: list[str] = []
        self.num_computed_tokens = num_cached_tokens
        self.state = SessionState.PREFILLING
        self.cloud = CloudState.WAITING if use_cloud else CloudState.OFF
        self.device_compute = device_compute
        self.cloud_limit = max_tokens if cloud_limit is None else cloud_limit
        self.plan = plan
        self.cloud_tokens_received = 0
        self.handover_index: int | None = None
        self.fallback: str | None = fallback
        self.finish_reason: FinishReason | None = None
        # with a pacer (pd) the pace may spread a buffer that cannot last past the bound, up to STRETCH times it
        clamp = max_gap_s * STRETCH if plan is not None and max_gap_s is not None else max_gap_s
        self.controller: SpeedController[tuple[int, int, str]] = SpeedController(pace_s, clamp)
        self.shown: list[ShownToken] = []
        self._outbox: list[StopCloud] = []
        self._computing = 0  # tokens of the local step in flight (0: none)
        self._computing_since: float | None = None
        self._computing_decode = False
        self.pacer = plan.pace_planner() if plan is not None else None  # pd: pace on the real timeline
        self.prompt_tokens = len(self.prompt)  # the user's prompt; ``prompt`` is what the device computes
        self.refinement: dict | None = None
        self.kept_indices: list[int] | None = None  # user-prompt positions the device computes, once refined

    # ------------------------------------------------------------------ queries

    @property
    def finished(self) -> bool:
        """The answer is complete and every token has been shown."""
        return self.state is SessionState.FINISHED and self.controller.buffered == 0

    def next_compute(self, now_s: float | None = None) -> Compute | None:
        """The next local step, or None (one already running, nothing to do, or the answer is done);
        ``now_s``: when the shell starts it (the pacer measures the device's speed from it)."""
        if self._computing or self.state is SessionState.FINISHED or not self.device_compute:
            return None
        pending = self._pending(self.chunk_size)
        if not pending:
            return None
        decode = self.state is SessionState.DECODING and self.num_computed_tokens + 1 == self.total_tokens
        step = Compute(pending, decode=decode)
        self._computing, self._computing_since, self._computing_decode = len(step.token_ids), now_s, decode
        return step

    @property
    def total_tokens(self) -> int:
        """Length of what the device computes: its prompt plus the answer so far."""
        return len(self.prompt) + len(self.answer)

    def computed_token_ids(self) -> list[int]:
        """The tokens in the device's KV cache, in order (what a next turn can reuse)."""
        return (self.prompt + self.answer)[: self.num_computed_tokens]

    def messages_to_send(self) -> list[StopCloud]:
        """What the shell must tell the cloud now (each message once)."""
        out, self._outbox = self._outbox, []
        return out

    def next_release_s(self) -> float | None:
        """When the next buffered token is due to be shown (None: nothing buffered)."""
        return self.controller.next_release_s()

    def release_due(self, now_s: float) -> list[ShownToken]:
        """The tokens to show at ``now_s``, in order, with their scheduled show times."""
        out = []
        for item in self.controller.release_due(now_s):
            index, token_id, origin = item.item
            out.append(ShownToken(index, token_id, origin, item.arrival_s, item.shown_s))
        self.shown.extend(out)
        return out

    # ------------------------------------------------------------------ events

    def on_computed(self, num_tokens: int, next_token: int, now_s: float) -> None:
        """A local step over ``num_tokens`` tokens finished; ``next_token`` was sampled from its logits."""
        if self.pacer is not None and self._computing_since is not None:
            self.pacer.on_step(num_tokens, self._computing_since, now_s, self._computing_decode)
        self._computing, self._computing_since = 0, None
        self.num_computed_tokens += num_tokens
        if self.state is SessionState.FINISHED:
            return
        if self.num_computed_tokens < len(self.prompt):
            self._repace(now_s)
            return
        if self.num_computed_tokens < self.total_tokens:
            self._move(SessionState.CATCHING_UP)  # more cloud tokens arrived meanwhile: prefill them too
            self._repace(now_s)
            return
        if self.state is not SessionState.DECODING:
            self._take_over()
        self._commit(next_token, "device", now_s)
        self._repace(now_s)

    def on_cloud_token(self, index: int, token_id: int, now_s: float) -> None:
        """Cloud token ``index`` (0-based) arrived."""
        if self.cloud not in (CloudState.WAITING, CloudState.STREAMING) or index < self.cloud_tokens_received:
            return  # after the hand-over, a stop or a failure; or a duplicate
        if index > self.cloud_tokens_received:
            self.on_cloud_failed(Fallback.CLOUD_PROTOCOL_ERROR.because(
                f"token {index} arrived before {self.cloud_tokens_received}"))
            return
        self.cloud = CloudState.RELEASED if token_id in self.stop_token_ids else CloudState.STREAMING
        self.cloud_tokens_received += 1
        if self.pacer is not None:  # every plan has one: it sets the pace from the first token on (``_repace``)
            self.pacer.on_arrival(now_s)
        if self.state in (SessionState.DECODING, SessionState.FINISHED):
            return
        self._commit(token_id, "cloud", now_s)
        self._repace(now_s)

    def on_cloud_ended(self, reason: str) -> None:
        """The cloud finished the request (``done``) for ``reason``."""
        if self.cloud not in (CloudState.WAITING, CloudState.STREAMING):
            return
        if reason in (DoneReason.ERROR, DoneReason.DISCONNECTED) or \
                (reason != DoneReason.EOS and self.cloud_tokens_received == 0):
            self.on_cloud_failed(Fallback.CLOUD_ENDED.because(reason))
            return
        self.cloud = CloudState.RELEASED
        if not self.device_compute and not self.stop_token_ids and reason == DoneReason.EOS and self.answer:
            # without a tokenizer the device could not tell the cloud's end-of-turn token: ``done`` names it
            self.answer.pop()
            self.origins.pop()
        if not self.device_compute and self.state is not SessionState.FINISHED:
            self._finish(FinishReason.STOP if reason == DoneReason.EOS else FinishReason.LENGTH)

    def on_cloud_accepted(self, estimated_ttft_s: float, now_s: float) -> None:
        """The cloud accepted the request and estimates its TTFT: give it up when the device would be first,
        else tighten k (pd mode, through the plan)."""
        if self.plan is None or self.cloud is not CloudState.WAITING:
            return
        give_up, k = self.plan.after_estimate(now_s, estimated_ttft_s, self.cloud_limit)
        if give_up:
            self.give_up_cloud(give_up)
        elif k < self.cloud_limit:
            self.limit_cloud(k)

    def on_cloud_failed(self, reason: str) -> None:
        """The cloud cannot help (unreachable, refused, rejected, dropped, too slow); the device goes on alone.
        Recorded as the fallback reason unless the device had taken over already."""
        if self.cloud not in (CloudState.WAITING, CloudState.STREAMING):
            return
        self.cloud = CloudState.FAILED
        self.controller.hold_until(float("-inf"))  # no buffer to wait for: show what is here
        if self.state is not SessionState.FINISHED:
            self.fallback = reason
            if not self.device_compute:
                self._finish(FinishReason.ERROR)

    def on_refined_prompt(self, kept_indices: list[int]) -> None:
        """The cloud says which prompt positions matter: the rest of the local prefill reads only those.

        Positions computed already (or in the step in flight) stay, so no work is lost; the device's
        prompt becomes ``prompt[:boundary] + prompt[kept >= boundary]``. Too late once the prompt is in
        the KV cache (then nothing changes; ``refinement["applied"]`` says so)."""
        boundary = self.num_computed_tokens + self._computing
        n = len(self.prompt)
        if self.refinement is not None:
            return
        if any(not 0 <= i < n for i in kept_indices) or any(b <= a for a, b in zip(kept_indices, kept_indices[1:])):
            self.refinement = {"applied": False, "note": "ignored: kept indices are not increasing prompt positions"}
            return
        if self.state is not SessionState.PREFILLING or boundary >= n or not self.device_compute:
            self.refinement = {"applied": False, "note": "arrived after the local prefill of the prompt"}
            return
        self.prompt = self.prompt[:boundary] + [self.prompt[i] for i in kept_indices if i >= boundary]
        self.kept_indices = list(range(boundary)) + [i for i in kept_indices if i >= boundary]
        # "kept_indices" (the count's old name) is emitted beside "kept_tokens" for one release
        self.refinement = {"applied": True, "kept_tokens": len(kept_indices), "kept_indices": len(kept_indices),
                           "device_prompt_tokens": len(self.prompt), "prompt_tokens": n, "kept_from_position": boundary}

    def limit_cloud(self, num_tokens: int) -> None:
        """Ask the cloud for at most ``num_tokens`` tokens in all (a tighter k once its TTFT is known)."""
        if self.cloud in (CloudState.WAITING, CloudState.STREAMING) and num_tokens >= 1:
            self.cloud_limit = min(self.cloud_limit, num_tokens)
            self._outbox.append(StopCloud(num_tokens - 1))

    def give_up_cloud(self, reason: str) -> None:
        """Stop using the cloud before its first token (e.g. it would answer later than the device)."""
        if self.cloud is CloudState.WAITING:
            self._outbox.append(StopCloud(-1))
            self.on_cloud_failed(reason)

    def stop_at(self, index: int) -> None:
        """The shown text hit a stop string in token ``index``: the answer ends there; later tokens (buffered
        or still to come) are dropped."""
        if index >= len(self.answer):
            raise ValueError(f"token {index} is not part of the answer ({len(self.answer)} tokens)")
        del self.answer[index + 1:], self.origins[index + 1:]
        self.controller.clear()
        self.num_computed_tokens = min(self.num_computed_tokens, self.total_tokens)
        if self.state is not SessionState.FINISHED:
            self._finish(FinishReason.STOP)
        else:
            self.finish_reason = FinishReason.STOP

    # ------------------------------------------------------------------ internals

    def _pending(self, limit: int) -> tuple[int, ...]:
        """Up to ``limit`` tokens after ``num_computed_tokens`` in ``prompt + answer``, without joining them."""
        start, n = self.num_computed_tokens, len(self.prompt)
        out = self.prompt[start:start + limit] if start < n else []
        if len(out) < limit:
            first = max(0, start - n)
            out = out + self.answer[first:first + limit - len(out)]
        return tuple(out)

    def _take_over(self) -> None:
        """Local KV covers prompt + every committed token: the device produces the rest."""
        j = len(self.answer)
        if self.cloud is CloudState.WAITING:
            self.give_up_cloud(Fallback.CLOUD_SLOW.because("the device finished the prompt before the first cloud token"))
        elif self.cloud is CloudState.STREAMING:
            self._outbox.append(StopCloud(j - 1))
            self.cloud = CloudState.RELEASED
        if self.cloud_tokens_received:
            self.handover_index = j
        self._move(SessionState.DECODING)

    def _commit(self, token_id: int, origin: str, now_s: float) -> None:
        if token_id in self.stop_token_ids:
            self._finish(FinishReason.STOP)
            return
        index = len(self.answer)
        self.answer.append(int(token_id))
        self.origins.append(origin)
        self.controller.push((index, int(token_id), origin), now_s)
        if len(self.answer) >= self.max_tokens:
            self._finish(FinishReason.LENGTH)

    def _repace(self, now_s: float) -> None:
        """Ask the pacer for the pace, and for the first cloud token's hold while none is shown (pd mode)."""
        p = self.pacer
        if p is None or self.state is SessionState.FINISHED or not p.arrivals:
            return
        if self.state is SessionState.DECODING or self.cloud is CloudState.FAILED:
            if self.handover_index is not None:
                self.controller.set_pace(p.pace_s(handed_over=True))
            self.controller.hold_until(float("-inf"))
            return
        pace, hold_until = p.advise(now_s, Progress(
            prompt_tokens=len(self.prompt), computed=self.num_computed_tokens, received=self.cloud_tokens_received,
            in_flight=self._computing, in_flight_since_s=self._computing_since, cloud_limit=self.cloud_limit,
            streaming=self.cloud is CloudState.STREAMING, chunk=self.chunk_size, max_tokens=self.max_tokens,
            shown=len(self.shown), last_shown_s=self.controller.last_shown_s))
        if hold_until is not None:
            self.controller.hold_until(hold_until)
        self.controller.set_pace(pace)

    def _finish(self, reason: FinishReason) -> None:
        self.finish_reason = reason
        if self.cloud in (CloudState.WAITING, CloudState.STREAMING):
            self._outbox.append(StopCloud(-1) if self.cloud is CloudState.WAITING else StopCloud(len(self.answer) - 1))
            self.cloud = CloudState.RELEASED
        self._move(SessionState.FINISHED)

    def _move(self, new: SessionState) -> None:
        if new is self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"session: {self.state.name} -> {new.name} is not a valid transition")
        self.state = new
