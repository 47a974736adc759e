"""What both sides of a protocol v1 connection share (Sans-I/O): states, events, the per-request track and the
outgoing queue. :mod:`pdlink.common.server_connection` and :mod:`pdlink.common.client_connection` build on it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .protocol_codec import encode
from .protocol_messages import DoneReason, Message, PrefillRequest

RECENT_IDS_KEPT = 1024  # finished request ids remembered per connection (duplicates, late Stop/Cancel)


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Event: the peer broke the protocol. On the server the same ``Error`` is already queued to the
    client; on the client it is local only. After a ``fatal`` one the shell flushes and closes."""

    code: str
    message: str
    request_id: str | None = None
    fatal: bool = False


class ConnectionState(enum.Enum):
    """IDLE (client before ``hello()``) -> HANDSHAKE -> OPEN -> CLOSED (fatal error or connection lost)."""

    IDLE = "idle"
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class RequestState(enum.Enum):
    """PENDING (sent / awaiting accept or reject) -> ACCEPTED -> STREAMING -> FINISHED."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    STREAMING = "streaming"
    FINISHED = "finished"


_S = RequestState
_TRANSITIONS = {
    _S.PENDING: {_S.ACCEPTED, _S.FINISHED},  # PENDING -> FINISHED: rejected, or cancelled before accept
    _S.ACCEPTED: {_S.STREAMING, _S.FINISHED},
    _S.STREAMING: {_S.STREAMING, _S.FINISHED},
    _S.FINISHED: set(),
}


class RequestTrack:
    """One request's protocol state; the same bookkeeping on both sides of the connection."""

    __slots__ = ("request", "state", "next_index", "stop_after", "cancelled", "eos", "refined")

    def __init__(self, request: PrefillRequest):
        self.request = request
        self.state = _S.PENDING
        self.next_index = 0  # tokens sent (server) / received in order (client)
        self.stop_after: int | None = None
        self.cancelled = self.eos = self.refined = False

    def advance(self, new: RequestState) -> bool:
        """Move to ``new``; False (and no change) when the protocol does not allow that transition."""
        if new not in _TRANSITIONS[self.state]:
            return False
        self.state = new
        return True

    def end_reason(self) -> DoneReason | None:
        """Why no further token may be sent (cancelled, eos, stopped, max_leading_tokens), or None."""
        if self.cancelled:
            return DoneReason.CANCELLED
        if self.eos:
            return DoneReason.EOS
        if self.stop_after is not None and self.next_index > self.stop_after:
            return DoneReason.STOPPED
        if self.next_index >= self.request.max_leading_tokens:
            return DoneReason.MAX_LEADING_TOKENS
        return None

    def refine_problem(self, kept: list[int], keep_ratio: float) -> str | None:
        """Why a ``RefinedPrompt`` with these values breaks the protocol for this request, or None."""
        if self.refined or not (self.request.refine and self.request.refine.enabled):
            return "refined_prompt not requested, or already sent"
        if not 0.0 < keep_ratio <= 1.0:
            return "keep_ratio must be in (0, 1]"
        n = len(self.request.prompt_token_ids) if self.request.prompt_token_ids is not None else None
        if any(b <= a for a, b in zip(kept, kept[1:])) or (kept and (kept[0] < 0 or (n is not None and kept[-1] >= n))):
            return "kept_indices must be strictly increasing prompt positions"
        return None


class Connection:
    """What both sides share: the outgoing queue, the request table and the recent finished ids."""

    def __init__(self, state: ConnectionState):
        self.state = state
        self._out: list[str] = []
        self._requests: dict[str, RequestTrack] = {}
        self._recent: dict[str, None] = {}  # insertion-ordered set of finished ids

    def data_to_send(self) -> list[str]:
        """The text frames queued since the last call, in order; the shell must send all of them."""
        out, self._out = self._out, []
        return out

    @property
    def in_flight(self) -> list[str]:
        """Ids of the requests not finished yet."""
        return list(self._requests)

    def request_state(self, request_id: str) -> RequestState | None:
        """The request's state; FINISHED for a recently finished one, None for an unknown id."""
        track = self._requests.get(request_id)
        return track.state if track else (_S.FINISHED if request_id in self._recent else None)

    def connection_lost(self) -> list[str]:
        """Call when the socket is gone. Returns the ids that were in flight (now finished, nothing sent)."""
        self.state = ConnectionState.CLOSED
        lost = list(self._requests)
        for request_id in lost:
            self._finish(request_id)
        return lost

    def _send(self, msg: Message) -> None:
        if self.state is not ConnectionState.CLOSED:
            self._out.append(encode(msg))

    def _finish(self, request_id: str, remember: bool = True) -> None:
        self._requests.pop(request_id).advance(_S.FINISHED)
        if remember:
            self._recent[request_id] = None
            if len(self._recent) > RECENT_IDS_KEPT:
                del self._recent[next(iter(self._recent))]
