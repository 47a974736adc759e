"""The server side of one protocol v1 connection (Sans-I/O): frames in, events out; answers queued as frames."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Callable, Sequence, Union

from .connection import Connection, ConnectionState, ProtocolViolation, RequestState, RequestTrack
from .protocol_codec import decode_client
from .protocol_messages import (
    Accepted, Cancel, DoneReason, Done, Error, Hello, Limits, LocalProtocolError, Numerics, Ping, Pong, PrefillRequest,
    ProtocolError, RefinedPrompt, RejectReason, Rejected, Stop, Token, Welcome,
)

_S = RequestState


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """Server event: the connection rejected a ``PrefillRequest`` itself; ``rejected`` is already queued."""

    rejected: Rejected


ServerEvent = Union[Hello, PrefillRequest, Stop, Cancel, Ping, ProtocolViolation, RequestRejected]


class ServerConnection(Connection):
    """Server side of one connection.

    Feed frames to ``receive_frame()``; answer each ``PrefillRequest`` event with ``accept()`` or
    ``reject()``; stream with ``send_token()`` until it returns False; end with ``finish()``, using
    ``finish_reason()`` when the protocol ended the stream. ``Stop``/``Cancel`` events tell the
    generation loop to stop early. When ``state`` becomes CLOSED, flush ``data_to_send()`` and close.
    ``count_text_tokens`` (optional) lets ``prompt_text`` prompts be checked against the limit too.
    """

    def __init__(self, limits: Limits, expected_auth_token: str | None, model_id: str, tokenizer_hash: str,
                 vocab_size: int, *, server: str = "pdlink-cloud",
                 count_text_tokens: Callable[[str], int] | None = None, features: Sequence[str] = (),
                 numerics: Numerics | None = None):
        super().__init__(ConnectionState.HANDSHAKE)
        self.limits, self.model_id, self.tokenizer_hash, self.vocab_size = limits, model_id, tokenizer_hash, vocab_size
        self.server, self.count_text_tokens, self.features = server, count_text_tokens, list(features)
        self.numerics = numerics
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
                return self._reject_now(exc.request_id, RejectReason.INVALID_REQUEST, exc.message)
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

    def reject(self, request_id: str, reason: RejectReason | str, message: str = "",
               retry_after_s: float | None = None) -> bool:
        """Reject a PENDING request (queues ``Rejected``; the id may be reused). False if it already finished.
        Raises ``LocalProtocolError`` for an unknown id, a ``reason`` outside ``RejectReason``, or an
        accepted request."""
        reason = _member(RejectReason, reason, "reject", request_id)
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

    def finish_reason(self, request_id: str) -> DoneReason | None:
        """Why the request may send no more tokens (cancelled, eos, stopped, max_leading_tokens), or None
        while it may (also None for unknown/finished ids). Pass it to ``finish()``."""
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

    def finish(self, request_id: str, reason: DoneReason | str, cloud_busy_s: float) -> bool:
        """Queue ``Done`` and forget the request. False when it already finished (e.g. connection lost);
        ``LocalProtocolError`` for an unknown id or a reason outside ``DoneReason``."""
        reason = _member(DoneReason, reason, "done", request_id)
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

    def _track(self, request_id: str, pending_only: bool) -> RequestTrack:
        track = self._requests.get(request_id)
        if track is None:
            raise LocalProtocolError("unknown_request", f"no request {request_id!r} in flight", request_id)
        if pending_only and track.state is not _S.PENDING:
            raise LocalProtocolError("bad_state", f"request {request_id!r} is {track.state.value}", request_id)
        return track

    def _violation(self, code, message, request_id=None, fatal=False) -> list[ServerEvent]:
        self.send_error(code, message, request_id, fatal)
        return [ProtocolViolation(code, message, request_id, fatal)]

    def _reject_now(self, request_id, reason: RejectReason, message, retry_after_s=None,
                    registered=False) -> list[ServerEvent]:
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
                           tokenizer_hash=self.tokenizer_hash, limits=self.limits, features=self.features,
                           numerics=self.numerics))
        self.tokenizer_match = hello.tokenizer_hash == self.tokenizer_hash
        if not self.tokenizer_match:
            self.send_error("tokenizer_mismatch", "the client's tokenizer differs from the server's, so token ids "
                            "cannot cross: send prompt_text (no prompt/stop token ids) and use each Token's text")
        return [hello]

    def _on_prefill(self, req: PrefillRequest) -> list[ServerEvent]:
        # The decoder already checked every rule of the request on its own (ids, k >= 1, one prompt, sampling).
        rid, limits = req.request_id, self.limits
        if self.request_state(rid) is not None:
            return self._violation("duplicate_request", f"request id {rid!r} is already in use", rid)
        if len(self._requests) >= limits.max_concurrent_requests:
            return self._reject_now(rid, RejectReason.OVERLOADED, f"at most {limits.max_concurrent_requests} "
                                    "requests in flight per connection")
        ids, problem = req.prompt_token_ids, None
        if req.max_leading_tokens > limits.max_leading_tokens:
            problem = f"max_leading_tokens is limited to {limits.max_leading_tokens}"
        elif not self.tokenizer_match and (ids is not None or req.stop_token_ids):
            problem = "tokenizer mismatch: token ids cannot cross; send prompt_text and no stop_token_ids"
        elif any(t >= self.vocab_size for t in (*(ids or ()), *req.stop_token_ids)):
            problem = f"token ids must be in [0, {self.vocab_size})"
        if problem:
            return self._reject_now(rid, RejectReason.INVALID_REQUEST, problem)
        counted = req.prompt_text is not None and self.count_text_tokens is not None
        n = len(ids) if ids is not None else (self.count_text_tokens(req.prompt_text) if counted else 0)
        if n > limits.max_prompt_tokens:
            return self._reject_now(rid, RejectReason.PROMPT_TOO_LONG,
                                    f"{n} prompt tokens > limit {limits.max_prompt_tokens}")
        self._requests[rid] = RequestTrack(req)
        return [req]

    def _on_stop_or_cancel(self, msg: Stop | Cancel) -> list[ServerEvent]:
        rid = msg.request_id  # valid: the decoder checked it, and after_index >= 0
        track = self._requests.get(rid)
        if track is None:  # a late Stop/Cancel racing our Done is normal and ignored
            return [] if rid in self._recent else self._violation("unknown_request", f"no request {rid!r}", rid)
        if isinstance(msg, Cancel):
            track.cancelled = True
        else:
            track.stop_after = msg.after_index if track.stop_after is None else min(track.stop_after, msg.after_index)
        return [msg]


def _member(enum_cls, value, what: str, request_id: str):
    """``value`` as a member of ``enum_cls``; ``LocalProtocolError`` when it names none."""
    try:
        return enum_cls(value)
    except ValueError:
        raise LocalProtocolError("bad_field", f"unknown {what} reason {value!r}", request_id) from None
