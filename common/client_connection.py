"""The client side of one protocol v1 connection (Sans-I/O): calls in, frames out; frames in, events out."""

from __future__ import annotations

from typing import Union

from .connection import Connection, ConnectionState, ProtocolViolation, RequestState, RequestTrack
from .protocol_codec import decode_client, decode_server, encode
from .protocol_messages import (
    DEFAULT_MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Accepted, Cancel, Done, DoneReason, Error, Hello,
    LocalProtocolError, Ping, Pong, PrefillRequest, ProtocolError, RefinedPrompt, Rejected, Stop, Token, Welcome,
)

_S = RequestState

ClientEvent = Union[Welcome, Accepted, Rejected, Token, RefinedPrompt, Done, Error, Pong, ProtocolViolation]


class ClientConnection(Connection):
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
        frame = encode(request)
        try:  # the server's own decoder: the Meta constraints are not checked when a struct is built
            decode_client(frame, max_bytes=4 * len(frame))
        except ProtocolError as exc:
            raise LocalProtocolError("bad_field", exc.message, rid) from None
        if self.request_state(rid) is not None:
            raise LocalProtocolError("duplicate_request", f"request id {rid!r} is already in use", rid)
        if self.tokenizer_match is False and request.prompt_token_ids is not None:
            raise LocalProtocolError("tokenizer_mismatch", "the server's tokenizer differs: send prompt_text", rid)
        limit = self.welcome.limits.max_message_bytes if self.welcome else None
        if limit is not None and len(frame.encode("utf-8")) > limit:
            raise LocalProtocolError("oversized", f"request frame is over the server's {limit}-byte limit", rid)
        self._requests[rid] = RequestTrack(request)
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

    def _on_token(self, track: RequestTrack, tok: Token) -> list[ClientEvent]:
        rid = tok.request_id
        if track.state is _S.PENDING:
            return self._violation("bad_state", "token before accepted", rid)
        if tok.index != track.next_index:
            code = "token_gap" if tok.index > track.next_index else "token_duplicate"
            return self._violation(code, f"token index {tok.index}, expected {track.next_index}", rid)
        reason = track.end_reason()
        if reason in (DoneReason.EOS, DoneReason.MAX_LEADING_TOKENS):
            return self._violation("token_after_end", f"token {tok.index} after {reason}", rid)
        track.advance(_S.STREAMING)
        track.next_index += 1
        track.eos = tok.token_id in track.request.stop_token_ids
        return [] if reason else [tok]  # past our stop index or cancelled: in flight before Stop/Cancel

    def _live(self, request_id: str) -> RequestTrack | None:
        track = self._requests.get(request_id)
        if track is None and request_id not in self._recent:
            raise LocalProtocolError("unknown_request", f"no request {request_id!r}", request_id)
        return None if track is None or self.state is ConnectionState.CLOSED else track

    def _violation(self, code, message, request_id=None, fatal=False) -> list[ClientEvent]:
        if fatal:
            self.state = ConnectionState.CLOSED
        return [ProtocolViolation(code, message, request_id, fatal)]
