"""One websocket client of the cloud server: its Sans-I/O protocol state, its live streams, its outbox.

``receive()`` reads frames (with the handshake and idle timeouts) until the connection ends,
feeds them to the protocol's ``ServerConnection`` and turns the events that come out into model worker
commands (admit, stop, cancel). The worker's outputs for this client arrive on the event loop through
``deliver()``. Everything sent goes through the protocol state machine, which enforces k, ``stop`` and
``cancel`` on the wire, and then through one ordered outbox that a writer task drains to the socket.
The scheduler's state is never read here: the worker answers every command under its own lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.exceptions import ConnectionClosed

from pdlink.cloud.outputs import FinishedOutput, Output, RefinedOutput, TokenOutput
from pdlink.cloud.refinement import DEFAULT_WINDOW, RefineSpec
from pdlink.cloud.request import Request
from pdlink.common.protocol import (
    Cancel, ConnectionState, Hello, PrefillRequest, ProtocolViolation, RequestRejected, ServerConnection, Stop,
)
from pdlink.common.tokenizer import StreamingDetokenizer

if TYPE_CHECKING:
    from pdlink.cloud.server import CloudServer

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    """A request of this connection that the worker holds, as the event loop sees it."""

    request: Request  # the worker's from admission on: only ever passed back to it
    detok: StreamingDetokenizer
    received_s: float
    max_tokens: int
    stop_token_ids: frozenset[int]
    stop_after: int | None = None  # the client's stop index (the worker has it too)

    def is_last(self, index: int, token_id: int) -> bool:
        """True when token ``index`` is the last this request may send (k, the stop index, a stop token)."""
        return (index + 1 >= self.max_tokens or token_id in self.stop_token_ids
                or (self.stop_after is not None and index >= self.stop_after))


class Connection:
    """One websocket connection to the cloud server (see the module doc): ``await receive()``, then ``close()``."""

    def __init__(self, connection_id: int, ws: WebSocket, protocol: ServerConnection, server: CloudServer):
        self.id, self.ws, self.protocol, self._server = connection_id, ws, protocol, server
        self.streams: dict[str, _Stream] = {}
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._close_code, self._close_reason = 1000, ""

    async def receive(self) -> None:
        """Read and act on frames until the client leaves, breaks the protocol or idles out; ``close()`` next."""
        cfg, ws, protocol = self._server.cfg, self.ws, self.protocol
        self._writer = asyncio.create_task(self._write())
        try:
            try:
                frame = await asyncio.wait_for(ws.recv(), cfg.handshake_timeout_s)
            except TimeoutError:
                protocol.send_error("handshake_timeout", f"no hello within {cfg.handshake_timeout_s:g} s", fatal=True)
                self.flush()
            else:
                await self.on_frame(frame)
            while protocol.state is not ConnectionState.CLOSED:
                try:
                    frame = await asyncio.wait_for(ws.recv(), cfg.idle_timeout_s)
                except TimeoutError:
                    if self.streams:
                        continue
                    self._close_reason = "idle timeout"
                    return
                await self.on_frame(frame)
            self._close_code, self._close_reason = 1008, "protocol error (see the error frame)"
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        """End every live stream (the worker frees them), send what is queued, and close the socket."""
        self.protocol.connection_lost()
        for stream in self.streams.values():
            self._server.worker.cancel(stream.request, disconnected=True)
            self._server.metrics.finished.labels("disconnected").inc()
        self.streams.clear()
        self.outbox.put_nowait(None)
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, 5.0)
            except (TimeoutError, ConnectionClosed):
                self._writer.cancel()
        await self.ws.close(self._close_code, self._close_reason)

    async def _write(self) -> None:
        while (frame := await self.outbox.get()) is not None:
            await self.ws.send(frame)

    def flush(self) -> None:
        """Queue what the protocol has to send, in order."""
        for frame in self.protocol.data_to_send():
            self.outbox.put_nowait(frame)

    async def on_frame(self, frame: str | bytes) -> None:
        """Feed one received frame to the protocol and act on its events."""
        protocol, worker, metrics = self.protocol, self._server.worker, self._server.metrics
        for event in protocol.receive_frame(frame):
            if isinstance(event, PrefillRequest):
                await self._on_prefill(event)
            elif isinstance(event, Stop):
                rid, stream = event.request_id, self.streams.get(event.request_id)
                worker.stop((self.id, rid), event.after_index)
                if stream is not None:
                    stream.stop_after = event.after_index if stream.stop_after is None else \
                        min(stream.stop_after, event.after_index)
                    if reason := protocol.finish_reason(rid):
                        self.end(rid, reason)
            elif isinstance(event, Cancel):
                if event.request_id in self.streams:
                    self.end(event.request_id, "cancelled")
            elif isinstance(event, RequestRejected):
                metrics.rejections.labels(event.rejected.reason).inc()
            elif isinstance(event, ProtocolViolation):
                metrics.errors.labels(event.code).inc()
                log.info("connection %d: %s: %s", self.id, event.code, event.message)
            elif isinstance(event, Hello):
                log.info("connection %d: hello from %r", self.id, event.client)
        self.flush()

    async def _on_prefill(self, msg: PrefillRequest) -> None:
        server, rid = self._server, msg.request_id
        cfg, tok = server.cfg, server.tokenizer
        stop_ids = set(msg.stop_token_ids)
        try:
            if msg.prompt_token_ids is not None:
                ids = list(msg.prompt_token_ids)
            elif msg.prompt_text is not None:
                ids = await asyncio.to_thread(tok.encode, msg.prompt_text)
            else:
                # A chat-level request: the server's chat template, ending at the model's end of turn.
                messages = [{"role": m.role, "content": m.content} for m in msg.prompt_messages]
                ids = await asyncio.to_thread(lambda: tok.encode(tok.apply_chat_template(messages)))
                stop_ids |= set(server.backend.eos_token_ids)
        except Exception as exc:  # a chat template may refuse a message order
            return self._reject(rid, "invalid_request", f"cannot render the prompt: {exc}")
        if self.protocol.request_state(rid) is None or self.protocol.state is ConnectionState.CLOSED:
            return  # the connection went away while the text was being tokenized
        if not ids:
            return self._reject(rid, "invalid_request", "the prompt has no tokens")
        if len(ids) > cfg.max_prompt_tokens:
            return self._reject(rid, "prompt_too_long", f"{len(ids)} prompt tokens > limit {cfg.max_prompt_tokens}")
        request = Request((self.id, rid), ids, msg.max_leading_tokens, msg.sampling, sorted(stop_ids), arrival_s=time.perf_counter(), refine=_refine_spec(msg))
        try:
            verdict = await server.admit(request)
        except ValueError as exc:
            return self._reject(rid, "invalid_request", str(exc))
        if not verdict.accepted:
            return self._reject(rid, "overloaded", verdict.message, verdict.retry_after_s)
        if self.protocol.state is ConnectionState.CLOSED:  # gone while a cluster placed the request
            server.worker.cancel(request, disconnected=True)
            return
        self.streams[rid] = _Stream(request, StreamingDetokenizer(tok), request.arrival_s, msg.max_leading_tokens,
                                    frozenset(stop_ids))
        self.protocol.accept(rid, queue_position=verdict.queue_position,
                             estimated_ttft_s=round(verdict.estimated_ttft_s, 4), prompt_tokens=len(ids))
        server.metrics.prompt_tokens.inc(len(ids))

    def _reject(self, rid: str, reason: str, message: str, retry: float | None = None) -> None:
        if self.protocol.reject(rid, reason, message, retry):
            self._server.metrics.rejections.labels(reason).inc()

    def deliver(self, rid: str, out: Output) -> bool:
        """Send one worker output of request ``rid`` (call ``flush()`` after a batch). False when the stream
        has ended already (cancelled, stopped or disconnected): nothing to do."""
        stream = self.streams.get(rid)
        if stream is None:
            return False
        protocol, metrics = self.protocol, self._server.metrics
        if isinstance(out, RefinedOutput):
            protocol.send_refined_prompt(rid, out.kept_indices, out.keep_ratio)
            return True
        if isinstance(out, TokenOutput):
            text = stream.detok.add(out.token_id)
            if stream.is_last(out.index, out.token_id):
                text += stream.detok.flush()
            reason = None
            if protocol.send_token(rid, out.token_id, text, out.time_s):
                metrics.tokens.inc()
                if out.index == 0:
                    metrics.ttft.observe(out.time_s - stream.received_s)
                if out.token_id in stream.stop_token_ids:  # also the server's own EOS ids (prompt_messages)
                    reason = "eos"
            reason = reason or protocol.finish_reason(rid)
        else:
            assert isinstance(out, FinishedOutput)
            reason = protocol.finish_reason(rid) or out.status.done_reason
        if reason:
            self.end(rid, reason)
        return True

    def end(self, rid: str, reason: str) -> None:
        """Finish a stream on the wire and make sure the scheduler has let go of it."""
        stream = self.streams.pop(rid)
        busy_s = self._server.worker.cancel(stream.request)
        if reason == "disconnected":
            reason = "cancelled"  # never on the wire: the connection is gone
        self.protocol.finish(rid, reason, round(busy_s, 6))
        self._server.metrics.finished.labels(reason).inc()


def _refine_spec(msg: PrefillRequest) -> RefineSpec | None:
    """What to score for a request that asked for ``refine`` (None: not asked). The scheduler skips it
    on a backend that cannot score."""
    opts = msg.refine
    if opts is None or not opts.enabled:
        return None
    return RefineSpec(keep_ratio=opts.keep_ratio, window=opts.window or DEFAULT_WINDOW)


def deliver_outputs(connections: dict[int, Connection], outputs: list) -> None:
    """Hand each output to its connection (``out.key`` = (connection id, request id)), then flush every
    connection that got one: one write per connection per batch of outputs. Gone connections are skipped."""
    touched: dict[int, Connection] = {}
    for out in outputs:
        connection_id, rid = out.key
        connection = connections.get(connection_id)
        if connection is not None and connection.deliver(rid, out):
            touched[connection_id] = connection
    for connection in touched.values():
        connection.flush()
