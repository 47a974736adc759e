"""Wire protocol v1 of the P/D-Device link, Sans-I/O: text frames in, events out; calls in, frames out.

``ServerConnection`` and ``ClientConnection`` hold one websocket connection's protocol state. The
shell (the asyncio server or client) feeds every received text frame to ``receive_frame()``, acts
on the events it returns, calls the send methods, and writes ``data_to_send()`` to the socket.
Nothing here does I/O or reads a clock. The messages live in :mod:`pdlink.common.protocol_messages`
and are re-exported from here; docs/protocol.md describes the protocol itself.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass
from typing import Callable, Sequence, Union

from .protocol_messages import (
    DEFAULT_MAX_MESSAGE_BYTES, DONE_REASONS, MAX_REQUEST_ID_CHARS, PROTOCOL_VERSION, REJECT_REASONS,
    SUPPORTED_VERSIONS, Accepted, Cancel, ChatMessage, ClientMessage, Done, Error, Hello, Limits, LocalProtocolError,
    Message, Ping, Pong, PrefillRequest, ProtocolError, RefinedPrompt, RefineOptions, Rejected,
    SamplingParams, ServerMessage, Stop, Token, Welcome, decode_client, decode_server, encode,
    request_id_problem,
)

__all__ = [
    "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_REQUEST_ID_CHARS", "REJECT_REASONS",
    "DONE_REASONS", "ProtocolError", "LocalProtocolError", "Message", "Limits", "SamplingParams", "RefineOptions",
    "ChatMessage", "Hello", "PrefillRequest", "Stop", "Cancel", "Ping", "Welcome", "Accepted", "Rejected", "Token", "RefinedPrompt",
    "Done", "Error", "Pong", "ClientMessage", "ServerMessage", "encode", "decode_client", "decode_server",
    "request_id_problem", "ProtocolViolation", "RequestRejected", "ServerEvent", "ClientEvent", "ConnectionState",
    "RequestState", "ServerConnection", "ClientConnection",
]

RECENT_IDS_KEPT = 1024  # finished request ids remembered per connection (duplicates, late Stop/Cancel)


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Event: the peer broke the protocol. On the server the same ``Error`` is already queued to the
    client; on the client it is local only. After a ``fatal`` one the shell flushes and closes."""

    code: str
    message: str
    request_id: str | None = None
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """Server event: the connection rejected a ``PrefillRequest`` itself; ``rejected`` is already queued."""

    rejected: Rejected


ServerEvent = Union[Hello, PrefillRequest, Stop, Cancel, Ping, ProtocolViolation, RequestRejected]
ClientEvent = Union[Welcome, Accepted, Rejected, Token, RefinedPrompt, Done, Error, Pong, ProtocolViolation]


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


class _Track:
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

    def end_reason(self) -> str | None:
        """Why no further token may be sent ("cancelled", "eos", "stopped", "max_leading_tokens"), or None."""
        if self.cancelled:
            return "cancelled"
        if self.eos:
            return "eos"
        if self.stop_after is not None and self.next_index > self.stop_after:
            return "stopped"
        if self.next_index >= self.request.max_leading_tokens:
            return "max_leading_tokens"
        return None

    def refine_problem(self, kept: list[int], keep_ratio: float) -> str | None:
        if self.refined or not (self.request.refine and self.request.refine.enabled):
            return "refined_prompt not requested, or already sent"
        if not 0.0 < keep_ratio <= 1.0:
            return "keep_ratio must be in (0, 1]"
        n = len(self.request.prompt_token_ids) if self.request.prompt_token_ids is not None else None
        if any(b <= a for a, b in zip(kept, kept[1:])) or (kept and (kept[0] < 0 or (n is not None and kept[-1] >= n))):
            return "kept_indices must be strictly increasing prompt positions"
        return None


class _Connection:
    """What both sides share: the outgoing queue, the request table and the recent finished ids."""

    def __init__(self, state: ConnectionState):
        self.state = state
        self._out: list[str] = []
        self._requests: dict[str, _Track] = {}
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


class ServerConnection(_Connection):
    """Server side of one connection.

    Feed frames to ``receive_frame()``; answer each ``PrefillRequest`` event with ``accept()`` or
    ``reject()``; stream with ``send_token()`` until it returns False; end with ``finish()``, using
    ``finish_reason()`` when the protocol ended the stream. ``Stop``/``Cancel`` events tell the
    generation loop to stop early. When ``state`` becomes CLOSED, flush ``data_to_send()`` and close.
    ``count_text_tokens`` (optional) lets ``prompt_text`` prompts be checked against the limit too.
    """

    def __init__(self, limits: Limits, expected_auth_token: str | None, model_id: str, tokenizer_hash: str,
                 vocab_size: int, *, server: str = "pdlink-cloud",
                 count_text_tokens: Callable[[str], int] | None = None, features: Sequence[str] = ()):
        super().__init__(ConnectionState.HANDSHAKE)
        self.limits, self.model_id, self.tokenizer_hash, self.vocab_size = limits, model_id, tokenizer_hash, vocab_size
        self.server, self.count_text_tokens, self.features = server, count_text_tokens, list(features)
        self._auth = None if expected_auth_token is None else expected_auth_token.encode("utf-8", "surrogatepass")
        self.hello: Hello | None = None
        self.tokenizer_match = True

    def receive_frame(self, frame: str | bytes) -> list[ServerEvent]:
        """Process one received frame; never raises. Answers (Welcome, Pong, Error, Rejected) are queued."""
        if self.state is ConnectionState.CLOSED:
            return []
        handshake = self.state is ConnectionState.HANDSHAKE
        try:
            msg = decode_client(frame, self.limits.max_message_bytes)
        except ProtocolError as exc:
            if not handshake and exc.msg_type == "prefill" and exc.request_id is not None \
                    and self.request_state(exc.request_id) is None:
                return self._reject_now(exc.request_id, "invalid_request", exc.message)
            return self._violation(exc.code, exc.message, exc.request_id, fatal=handshake)
        if handshake:
            if isinstance(msg, Hello):
                return self._on_hello(msg)
            return self._violation("handshake_required", "the first frame must be a hello", fatal=True)
        if isinstance(msg, PrefillRequest):
            return self._on_prefill(msg)
        if isinstance(msg, (Stop, Cancel)):
            return self._on_stop_or_cancel(msg)
        if isinstance(msg, Ping):
            self._send(Pong(nonce=msg.nonce))
            return [msg]
        return self._violation("unexpected_message", "hello was already received")

    def accept(self, request_id: str, queue_position: int = 0, estimated_ttft_s: float = 0.0,
               prompt_tokens: int = 0) -> bool:
        """Accept a PENDING request (queues ``Accepted``). False when it already finished (cancelled,
        connection lost); ``LocalProtocolError`` for an unknown id or a request accepted before."""
        if self.request_state(request_id) is _S.FINISHED:
            return False
        self._track(request_id, pending_only=True).advance(_S.ACCEPTED)
        self._send(Accepted(request_id=request_id, queue_position=queue_position, estimated_ttft_s=estimated_ttft_s,
                            prompt_tokens=prompt_tokens))
        return True

    def reject(self, request_id: str, reason: str, message: str = "", retry_after_s: float | None = None) -> bool:
        """Reject a PENDING request (queues ``Rejected``; the id may be reused). False if it already finished.
        Raises ``LocalProtocolError`` for an unknown id, a bad ``reason``, or an accepted request."""
        if reason not in REJECT_REASONS:
            raise LocalProtocolError("bad_field", f"unknown reject reason {reason!r}", request_id)
        if self.request_state(request_id) is _S.FINISHED:
            return False
        self._track(request_id, pending_only=True)
        self._reject_now(request_id, reason, message, retry_after_s, registered=True)
        return True

    def send_token(self, request_id: str, token_id: int, text: str, cloud_time_s: float) -> bool:
        """Queue the request's next ``Token`` (indices are assigned 0, 1, ...). Returns False and sends
        nothing when the request is unknown, finished, or ``finish_reason()`` is not None (cancelled,
        stopped past this index, eos sent, k tokens sent). Raises ``LocalProtocolError`` before
        ``accept()`` or for a token id outside the vocabulary."""
        track = self._requests.get(request_id)
        if track is None or self.state is ConnectionState.CLOSED or track.end_reason() is not None:
            return False
        if not 0 <= token_id < self.vocab_size:
            raise LocalProtocolError("bad_field", f"token id {token_id} is outside the vocabulary", request_id)
        if not track.advance(_S.STREAMING):
            raise LocalProtocolError("bad_state", f"accept() request {request_id!r} before sending tokens", request_id)
        self._send(Token(request_id=request_id, index=track.next_index, token_id=token_id, text=text,
                         cloud_time_s=cloud_time_s))
        track.next_index += 1
        track.eos = token_id in track.request.stop_token_ids
        return True

    def finish_reason(self, request_id: str) -> str | None:
        """Why the request may send no more tokens ("cancelled", "eos", "stopped", "max_leading_tokens"),
        or None while it may (also None for unknown/finished ids). Pass it to ``finish()``."""
        track = self._requests.get(request_id)
        return track.end_reason() if track else None

    def send_refined_prompt(self, request_id: str, kept_indices: list[int], keep_ratio: float) -> bool:
        """Queue the ``RefinedPrompt`` (at most once, only if the request asked for refine). False when the
        request is finished or cancelled; ``LocalProtocolError`` for bad indices or an unasked refine."""
        track = self._requests.get(request_id)
        if track is None or track.cancelled or self.state is ConnectionState.CLOSED:
            return False
        problem = track.refine_problem(list(kept_indices), keep_ratio)
        if problem:
            raise LocalProtocolError("bad_field", problem, request_id)
        track.refined = True
        self._send(RefinedPrompt(request_id=request_id, kept_indices=list(kept_indices), keep_ratio=keep_ratio))
        return True

    def finish(self, request_id: str, reason: str, cloud_busy_s: float) -> bool:
        """Queue ``Done`` and forget the request. False when it already finished (e.g. connection lost);
        ``LocalProtocolError`` for an unknown id or a reason outside ``DONE_REASONS``."""
        if reason not in DONE_REASONS:
            raise LocalProtocolError("bad_field", f"unknown done reason {reason!r}", request_id)
        if self.request_state(request_id) is _S.FINISHED:
            return False
        track = self._track(request_id, pending_only=False)
        self._finish(request_id)
        self._send(Done(request_id=request_id, reason=reason, tokens_sent=track.next_index, cloud_busy_s=cloud_busy_s,
                        stop_after_index=track.stop_after))
        return True

    def send_error(self, code: str, message: str, request_id: str | None = None, fatal: bool = False) -> None:
        """Queue an ``Error`` of the shell's own (e.g. "internal_error"); ``fatal`` closes the connection."""
        self._send(Error(code=code, message=message, request_id=request_id, fatal=fatal))
        if fatal:
            self.state = ConnectionState.CLOSED

    def _track(self, request_id: str, pending_only: bool) -> _Track:
        track = self._requests.get(request_id)
        if track is None:
            raise LocalProtocolError("unknown_request", f"no request {request_id!r} in flight", request_id)
        if pending_only and track.state is not _S.PENDING:
            raise LocalProtocolError("bad_state", f"request {request_id!r} is {track.state.value}", request_id)
        return track

    def _violation(self, code, message, request_id=None, fatal=False) -> list[ServerEvent]:
        self.send_error(code, message, request_id, fatal)
        return [ProtocolViolation(code, message, request_id, fatal)]

    def _reject_now(self, request_id, reason, message, retry_after_s=None, registered=False) -> list[ServerEvent]:
        if registered:
            self._finish(request_id, remember=False)  # a rejected id may be reused
        rejected = Rejected(request_id=request_id, reason=reason, message=message, retry_after_s=retry_after_s)
        self._send(rejected)
        return [RequestRejected(rejected)]

    def _on_hello(self, hello: Hello) -> list[ServerEvent]:
        given = None if hello.auth_token is None else hello.auth_token.encode("utf-8", "surrogatepass")
        if self._auth is not None and (given is None or not hmac.compare_digest(given, self._auth)):
            return self._violation("unauthorized", "missing or wrong auth_token", fatal=True)
        if hello.model_id != self.model_id:
            return self._violation("model_mismatch", f"this server serves {self.model_id!r}", fatal=True)
        self.hello, self.state = hello, ConnectionState.OPEN
        self._send(Welcome(protocol_version=hello.protocol_version, server=self.server, model_id=self.model_id,
                           tokenizer_hash=self.tokenizer_hash, limits=self.limits, features=self.features))
        self.tokenizer_match = hello.tokenizer_hash == self.tokenizer_hash
        if not self.tokenizer_match:
            self.send_error("tokenizer_mismatch", "the client's tokenizer differs from the server's, so token ids "
                            "cannot cross: send prompt_text (no prompt/stop token ids) and use each Token's text")
        return [hello]

    def _on_prefill(self, req: PrefillRequest) -> list[ServerEvent]:
        rid, limits = req.request_id, self.limits
        if request_id_problem(rid):
            return self._violation("bad_field", request_id_problem(rid))
        if self.request_state(rid) is not None:
            return self._violation("duplicate_request", f"request id {rid!r} is already in use", rid)
        if len(self._requests) >= limits.max_concurrent_requests:
            return self._reject_now(rid, "overloaded", f"at most {limits.max_concurrent_requests} requests "
                                    "in flight per connection")
        ids = req.prompt_token_ids
        problem = req.validate()
        if problem is None and req.max_leading_tokens > limits.max_leading_tokens:
            problem = f"max_leading_tokens is limited to {limits.max_leading_tokens}"
        if problem is None and not self.tokenizer_match and (ids is not None or req.stop_token_ids):
            problem = "tokenizer mismatch: token ids cannot cross; send prompt_text and no stop_token_ids"
        if problem is None and any(t >= self.vocab_size for t in (*(ids or ()), *req.stop_token_ids)):
            problem = f"token ids must be in [0, {self.vocab_size})"
        if problem:
            return self._reject_now(rid, "invalid_request", problem)
        counted = req.prompt_text is not None and self.count_text_tokens is not None
        n = len(ids) if ids is not None else (self.count_text_tokens(req.prompt_text) if counted else 0)
        if n > limits.max_prompt_tokens:
            return self._reject_now(rid, "prompt_too_long", f"{n} prompt tokens > limit {limits.max_prompt_tokens}")
        self._requests[rid] = _Track(req)
        return [req]

    def _on_stop_or_cancel(self, msg: Stop | Cancel) -> list[ServerEvent]:
        problem = msg.validate()
        rid = msg.request_id if request_id_problem(msg.request_id) is None else None
        if problem:
            return self._violation("bad_field", problem, rid)
        track = self._requests.get(rid)
        if track is None:  # a late Stop/Cancel racing our Done is normal and ignored
            return [] if rid in self._recent else self._violation("unknown_request", f"no request {rid!r}", rid)
        if isinstance(msg, Cancel):
            track.cancelled = True
        else:
            track.stop_after = msg.after_index if track.stop_after is None else min(track.stop_after, msg.after_index)
        return [msg]


class ClientConnection(_Connection):
    """Client side of one connection.

    Call ``hello()`` first (requests may follow at once), then ``prefill()`` / ``stop()`` / ``cancel()``
    / ``ping()``; feed every received frame to ``receive_frame()`` and send ``data_to_send()``. Tokens
    come out as ``Token`` events strictly in index order; tokens past a ``stop()`` index or after
    ``cancel()`` are dropped silently; gaps and duplicates become ``ProtocolViolation`` events.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(ConnectionState.IDLE)
        self.max_message_bytes = max_message_bytes
        self.hello_sent: Hello | None = None
        self.welcome: Welcome | None = None
        self.tokenizer_match: bool | None = None  # known once Welcome arrives

    def hello(self, model_id: str, tokenizer_hash: str, auth_token: str | None = None,
              device_profile: dict | None = None, client: str = "pdlink") -> None:
        """Queue the ``Hello``; call once, first. Raises ``LocalProtocolError`` when called again."""
        if self.state is not ConnectionState.IDLE:
            raise LocalProtocolError("bad_state", "hello() was already called")
        self.hello_sent = Hello(protocol_version=PROTOCOL_VERSION, model_id=model_id, tokenizer_hash=tokenizer_hash,
                                auth_token=auth_token, device_profile=device_profile, client=client)
        self.state = ConnectionState.HANDSHAKE
        self._send(self.hello_sent)

    def prefill(self, request: PrefillRequest) -> None:
        """Queue a ``PrefillRequest``. Raises ``LocalProtocolError``: before ``hello()`` or after close
        ("bad_state"), invalid request ("bad_field"), id in use ("duplicate_request"), token ids after a
        tokenizer mismatch ("tokenizer_mismatch"), frame over the server's size limit ("oversized")."""
        rid = request.request_id
        if self.state not in (ConnectionState.HANDSHAKE, ConnectionState.OPEN):
            raise LocalProtocolError("bad_state", f"cannot send requests in state {self.state.value}", rid)
        problem = request.validate()
        if problem:
            raise LocalProtocolError("bad_field", problem, rid)
        if self.request_state(rid) is not None:
            raise LocalProtocolError("duplicate_request", f"request id {rid!r} is already in use", rid)
        if self.tokenizer_match is False and request.prompt_token_ids is not None:
            raise LocalProtocolError("tokenizer_mismatch", "the server's tokenizer differs: send prompt_text", rid)
        frame = encode(request)
        limit = self.welcome.limits.max_message_bytes if self.welcome else None
        if limit is not None and len(frame.encode("utf-8")) > limit:
            raise LocalProtocolError("oversized", f"request frame is over the server's {limit}-byte limit", rid)
        self._requests[rid] = _Track(request)
        self._send(request)

    def stop(self, request_id: str, after_index: int) -> bool:
        """Queue ``Stop``: keep tokens 0..after_index, none after (later ones are dropped here too).
        False (nothing sent) when the request already finished; ``LocalProtocolError`` for an unknown id
        or ``after_index < 0``."""
        track = self._live(request_id)
        if track is None:
            return False
        if after_index < 0:
            raise LocalProtocolError("bad_field", "after_index must be >= 0", request_id)
        track.stop_after = after_index if track.stop_after is None else min(track.stop_after, after_index)
        self._send(Stop(request_id=request_id, after_index=after_index))
        return True

    def cancel(self, request_id: str) -> bool:
        """Queue ``Cancel``; no more tokens are delivered, a ``Done`` ends the request. False when it
        already finished; ``LocalProtocolError`` for an unknown id."""
        track = self._live(request_id)
        if track is None:
            return False
        track.cancelled = True
        self._send(Cancel(request_id=request_id))
        return True

    def ping(self, nonce: int = 0) -> None:
        """Queue a ``Ping``; the ``Pong`` event echoes ``nonce`` (e.g. a send timestamp in µs)."""
        self._send(Ping(nonce=nonce))

    def receive_frame(self, frame: str | bytes) -> list[ClientEvent]:
        """Process one received frame; never raises. Returns the events, ``ProtocolViolation`` for bad frames."""
        if self.state is ConnectionState.CLOSED:
            return []
        try:
            msg = decode_server(frame, self.max_message_bytes)
        except ProtocolError as exc:
            return self._violation(exc.code, exc.message, exc.request_id, fatal=exc.code == "unsupported_version")
        if isinstance(msg, Welcome):
            if self.state is not ConnectionState.HANDSHAKE:
                return self._violation("unexpected_message", "welcome outside the handshake")
            self.welcome, self.state = msg, ConnectionState.OPEN
            self.tokenizer_match = msg.tokenizer_hash == self.hello_sent.tokenizer_hash
            return [msg]
        if isinstance(msg, Error):
            if msg.fatal:
                self.state = ConnectionState.CLOSED
            return [msg]
        if isinstance(msg, Pong):
            return [msg]
        track = self._requests.get(msg.request_id)
        if track is None:
            return self._violation("unknown_request", f"{msg.__struct_config__.tag} for unknown request "
                                   f"{msg.request_id!r}", msg.request_id)
        if isinstance(msg, Token):
            return self._on_token(track, msg)
        if isinstance(msg, Accepted):
            return [msg] if track.state is _S.PENDING and track.advance(_S.ACCEPTED) else \
                self._violation("bad_state", "accepted twice", msg.request_id)
        if isinstance(msg, RefinedPrompt):
            problem = track.refine_problem(msg.kept_indices, msg.keep_ratio)
            track.refined = True
            return self._violation("bad_field", problem, msg.request_id) if problem else [msg]
        if isinstance(msg, Rejected):
            if track.state is not _S.PENDING:
                return self._violation("bad_state", "rejected after accepted", msg.request_id)
            self._finish(msg.request_id, remember=False)
            return [msg]
        events: list[ClientEvent] = [msg]  # Done
        if msg.tokens_sent != track.next_index:
            events += self._violation("token_count_mismatch", f"done says {msg.tokens_sent} tokens, "
                                      f"{track.next_index} arrived", msg.request_id)
        self._finish(msg.request_id)
        return events

    def _on_token(self, track: _Track, tok: Token) -> list[ClientEvent]:
        rid = tok.request_id
        if track.state is _S.PENDING:
            return self._violation("bad_state", "token before accepted", rid)
        if tok.index != track.next_index:
            code = "token_gap" if tok.index > track.next_index else "token_duplicate"
            return self._violation(code, f"token index {tok.index}, expected {track.next_index}", rid)
        reason = track.end_reason()
        if reason in ("eos", "max_leading_tokens"):
            return self._violation("token_after_end", f"token {tok.index} after {reason}", rid)
        track.advance(_S.STREAMING)
        track.next_index += 1
        track.eos = tok.token_id in track.request.stop_token_ids
        return [] if reason else [tok]  # past our stop index or cancelled: in flight before Stop/Cancel

    def _live(self, request_id: str) -> _Track | None:
        track = self._requests.get(request_id)
        if track is None and request_id not in self._recent:
            raise LocalProtocolError("unknown_request", f"no request {request_id!r}", request_id)
        return None if track is None or self.state is ConnectionState.CLOSED else track

    def _violation(self, code, message, request_id=None, fatal=False) -> list[ClientEvent]:
        if fatal:
            self.state = ConnectionState.CLOSED
        return [ProtocolViolation(code, message, request_id, fatal)]
