"""The cloud prefill server: a thin asyncio/websockets shell around the Sans-I/O ``ServerConnection``.

Every connection gets a ``ServerConnection``; frames go in, events come out, and the shell turns
``prefill``/``stop``/``cancel`` events into scheduler commands through the :class:`ModelWorker`
(the one thread that runs the model). Tokens come back from the worker thread, are handed to the
event loop, and leave through the connection's state machine, which enforces k, ``stop`` and
``cancel`` on the wire. ``GET /healthz`` and ``GET /metrics`` answer on the same port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Callable

from websockets.asyncio.server import ServerConnection as WSConnection, serve
from websockets.exceptions import ConnectionClosed

from pdlink.cloud.backend import Backend, load_backend
from pdlink.cloud.config import CloudConfig
from pdlink.cloud.metrics import CONTENT_TYPE, CloudMetrics
from pdlink.common.protocol import (
    PROTOCOL_VERSION, Cancel, ConnectionState, Hello, PrefillRequest, ProtocolViolation, RequestRejected,
    ServerConnection, Stop,
)
from pdlink.cloud.request import Request
from pdlink.cloud.refinement import DEFAULT_WINDOW, RefineSpec
from pdlink.cloud.scheduler import FinishedOutput, RefinedOutput, Scheduler, TokenOutput
from pdlink.cloud.worker import ModelWorker
from pdlink.common.tokenizer import StreamingDetokenizer

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    request: Request
    detok: StreamingDetokenizer
    received_s: float


class _Session:
    """One websocket connection: its protocol state, its live streams and its ordered outbox."""

    def __init__(self, sid: int, ws: WSConnection, conn: ServerConnection):
        self.sid, self.ws, self.conn = sid, ws, conn
        self.streams: dict[str, _Stream] = {}
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()


class CloudServer:
    """Serve one backend over protocol v1. ``await serve_forever()``; ``request_shutdown()`` ends it."""

    def __init__(self, cfg: CloudConfig, backend: Backend | None = None):
        self.cfg = cfg
        self.backend = backend or load_backend(cfg.model, device=cfg.device, threads=cfg.threads,
                                               max_sequences=cfg.max_batch_sequences, model_id=cfg.model_id,
                                               context_window=cfg.max_prompt_tokens + cfg.max_leading_tokens)
        need = cfg.max_prompt_tokens + cfg.max_leading_tokens
        if need > self.backend.context_window:
            raise ValueError(f"--max-prompt-tokens + --max-leading-tokens = {need} exceeds the model's context "
                             f"window of {self.backend.context_window}; lower them")
        self.tokenizer = self.backend.tokenizer
        self.scheduler = Scheduler(self.backend, cfg.scheduler_config())
        self.worker = ModelWorker(self.scheduler, self._outputs_from_worker)
        self.metrics = CloudMetrics(self._snapshot)
        self._sessions: dict[int, _Session] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Warm up, listen, call ``on_ready(url)`` once accepting, and serve until ``request_shutdown()``."""
        cfg = self.cfg
        self._loop, self._shutdown = asyncio.get_running_loop(), asyncio.Event()
        if cfg.warm_up:
            from pdlink.common.real_text import real_text

            ids = self.tokenizer.encode(real_text(cfg.prefill_chunk_tokens * 8))[:cfg.prefill_chunk_tokens]
            await asyncio.to_thread(self.worker.warm_up, ids)
        self.worker.start()
        tls = None
        if cfg.tls:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        slack = max(4096, cfg.max_message_bytes // 16)  # frames a bit over the limit get a protocol error
        try:
            async with serve(self._handle, cfg.host, cfg.port, process_request=self._http, ssl=tls,
                             max_size=cfg.max_message_bytes + slack, open_timeout=cfg.handshake_timeout_s,
                             ping_interval=cfg.ping_interval_s, ping_timeout=cfg.ping_interval_s,
                             compression=None, server_header="pdlink-cloud") as server:
                self.port = server.sockets[0].getsockname()[1]
                url = f"{'wss' if cfg.tls else 'ws'}://{cfg.host}:{self.port}"
                log.info("serving %s (%s) on %s", cfg.model_id, self.backend.info, url)
                if on_ready:
                    on_ready(url)
                await self._shutdown.wait()
        finally:
            self.worker.close()

    def request_shutdown(self) -> None:
        """Stop accepting and close every connection (safe from any thread)."""
        if self._loop and self._shutdown:
            self._loop.call_soon_threadsafe(self._shutdown.set)

    # ------------------------------------------------------------------ HTTP on the same port

    def _snapshot(self) -> dict:
        return self.worker.snapshot()

    def health(self) -> dict:
        """What ``GET /healthz`` answers."""
        snap = self._snapshot()
        return {"status": "ok" if self.worker.alive else "model_worker_stopped", "model_id": self.cfg.model_id, "tokenizer_hash": self.tokenizer.hash,
                "protocol_version": PROTOCOL_VERSION, "backend": self.backend.info.get("backend"),
                "connections": len(self._sessions), "requests_in_flight": snap["requests_live"],
                "queue_depth": snap["queued"], "decoding": snap["decoding"], "kv_sequences": snap["kv_sequences"],
                "prefill_tok_s": round(snap["prefill_tok_s"], 1), "busy_s": round(snap["busy_s"], 3)}

    def _http(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path in ("/healthz", "/metrics"):
            if path == "/healthz":
                health = self.health()
                status = 200 if health["status"] == "ok" else 503
                response, kind = connection.respond(status, json.dumps(health) + "\n"), "application/json"
            else:
                response, kind = connection.respond(200, self.metrics.render().decode()), CONTENT_TYPE
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = kind
            return response
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return connection.respond(404, "pdlink cloud: websocket protocol v1 at /, GET /healthz, GET /metrics\n")
        if len(self._sessions) >= self.cfg.max_connections:
            return connection.respond(503, f"too many connections (limit {self.cfg.max_connections})\n")
        return None

    # ------------------------------------------------------------------ websocket connections

    async def _handle(self, ws: WSConnection) -> None:
        cfg = self.cfg
        info = self.backend.info
        conn = ServerConnection(cfg.limits(), cfg.auth_token, cfg.model_id, self.tokenizer.hash,
                                self.backend.vocab_size, server=f"pdlink-cloud ({info.get('backend')} on "
                                f"{info.get('device')}, {info.get('threads')} threads)",
                                features=["refine"] if self.backend.supports_refinement else [])
        session = _Session(next(self._ids), ws, conn)
        self._sessions[session.sid] = session
        self.metrics.connections.inc()
        writer = asyncio.create_task(self._writer(session))
        close_code, close_reason = 1000, ""
        try:
            try:
                frame = await asyncio.wait_for(ws.recv(), cfg.handshake_timeout_s)
            except TimeoutError:
                conn.send_error("handshake_timeout", f"no hello within {cfg.handshake_timeout_s:g} s", fatal=True)
                self._flush(session)
            else:
                await self._on_frame(session, frame)
            while conn.state is not ConnectionState.CLOSED:
                try:
                    frame = await asyncio.wait_for(ws.recv(), cfg.idle_timeout_s)
                except TimeoutError:
                    if session.streams:
                        continue
                    close_reason = "idle timeout"
                    break
                await self._on_frame(session, frame)
            if conn.state is ConnectionState.CLOSED:
                close_code, close_reason = 1008, "protocol error (see the error frame)"
        except ConnectionClosed:
            pass
        finally:
            self._disconnect(session)
            session.outbox.put_nowait(None)
            try:
                await asyncio.wait_for(writer, 5.0)
            except (TimeoutError, ConnectionClosed):
                writer.cancel()
            await ws.close(close_code, close_reason)

    async def _writer(self, session: _Session) -> None:
        while (frame := await session.outbox.get()) is not None:
            await session.ws.send(frame)

    def _flush(self, session: _Session) -> None:
        for frame in session.conn.data_to_send():
            session.outbox.put_nowait(frame)

    async def _on_frame(self, session: _Session, frame) -> None:
        conn = session.conn
        for event in conn.receive_frame(frame):
            if isinstance(event, PrefillRequest):
                await self._on_prefill(session, event)
            elif isinstance(event, Stop):
                self.worker.stop((session.sid, event.request_id), event.after_index)
                if event.request_id in session.streams and conn.finish_reason(event.request_id):
                    self._end(session, event.request_id, conn.finish_reason(event.request_id))
            elif isinstance(event, Cancel):
                if event.request_id in session.streams:
                    self._end(session, event.request_id, "cancelled")
            elif isinstance(event, RequestRejected):
                self.metrics.rejections.labels(event.rejected.reason).inc()
            elif isinstance(event, ProtocolViolation):
                self.metrics.errors.labels(event.code).inc()
                log.info("connection %d: %s: %s", session.sid, event.code, event.message)
            elif isinstance(event, Hello):
                log.info("connection %d: hello from %r", session.sid, event.client)
        self._flush(session)

    async def _on_prefill(self, session: _Session, msg: PrefillRequest) -> None:
        rid, cfg, tok = msg.request_id, self.cfg, self.tokenizer
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
                stop_ids |= set(self.backend.eos_token_ids)
        except Exception as exc:  # a chat template may refuse a message order
            return self._reject(session, rid, "invalid_request", f"cannot render the prompt: {exc}")
        if session.conn.request_state(rid) is None or session.conn.state is ConnectionState.CLOSED:
            return  # the connection went away while the text was being tokenized
        if not ids:
            return self._reject(session, rid, "invalid_request", "the prompt has no tokens")
        if len(ids) > cfg.max_prompt_tokens:
            return self._reject(session, rid, "prompt_too_long",
                                f"{len(ids)} prompt tokens > limit {cfg.max_prompt_tokens}")
        ok, estimate = self.worker.can_accept(len(ids))
        if not ok:
            full = self.scheduler.num_live >= cfg.max_concurrent_requests
            why = (f"the server is at its limit of {cfg.max_concurrent_requests} requests" if full else
                   f"estimated TTFT {estimate:.2f} s is over the budget of {cfg.ttft_budget_s:g} s")
            retry = max(0.1, estimate - cfg.ttft_budget_s) if not full else 1.0
            return self._reject(session, rid, "overloaded", why, round(retry, 3))
        request = Request((session.sid, rid), ids, msg.max_leading_tokens, msg.sampling, sorted(stop_ids),
                          arrival_s=time.perf_counter(), refine=self._refine_spec(msg))
        try:
            self.worker.submit(request)
        except ValueError as exc:
            return self._reject(session, rid, "invalid_request", str(exc))
        session.streams[rid] = _Stream(request, StreamingDetokenizer(tok), request.arrival_s)
        session.conn.accept(rid, queue_position=max(0, self.scheduler.num_queued - 1),
                            estimated_ttft_s=round(estimate, 4), prompt_tokens=len(ids))
        self.metrics.prompt_tokens.inc(len(ids))

    def _refine_spec(self, msg: PrefillRequest) -> RefineSpec | None:
        """What to score for a request that asked for ``refine`` (None: not asked). The scheduler skips it
        on a backend that cannot score."""
        opts = msg.refine
        if opts is None or not opts.enabled:
            return None
        return RefineSpec(keep_ratio=opts.keep_ratio, window=opts.window or DEFAULT_WINDOW)

    def _reject(self, session: _Session, rid: str, reason: str, message: str, retry: float | None = None) -> None:
        if session.conn.reject(rid, reason, message, retry):
            self.metrics.rejections.labels(reason).inc()

    # ------------------------------------------------------------------ outputs from the worker thread

    def _outputs_from_worker(self, outputs) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs) -> None:
        touched = {}
        for out in outputs:
            sid, rid = out.key if isinstance(out.key, tuple) and len(out.key) == 2 else (None, None)
            session = self._sessions.get(sid)
            stream = session.streams.get(rid) if session else None
            if stream is None:
                continue  # cancelled, stopped or disconnected already
            conn, req = session.conn, stream.request
            if isinstance(out, RefinedOutput):
                conn.send_refined_prompt(rid, out.kept_indices, out.keep_ratio)
                touched[sid] = session
                continue
            if isinstance(out, TokenOutput):
                text = stream.detok.add(out.token_id)
                if out.index + 1 >= req.token_limit or out.token_id in req.stop_token_ids:
                    text += stream.detok.flush()
                reason = None
                if conn.send_token(rid, out.token_id, text, out.time_s):
                    self.metrics.tokens.inc()
                    if out.index == 0:
                        self.metrics.ttft.observe(out.time_s - stream.received_s)
                    if out.token_id in req.stop_token_ids:  # also the server's own EOS ids (prompt_messages)
                        reason = "eos"
                reason = reason or conn.finish_reason(rid)
            else:
                assert isinstance(out, FinishedOutput)
                reason = conn.finish_reason(rid) or out.status.done_reason
            if reason:
                self._end(session, rid, reason)
            touched[sid] = session
        for session in touched.values():
            self._flush(session)

    def _end(self, session: _Session, rid: str, reason: str) -> None:
        """Finish a stream on the wire and make sure the scheduler has let go of it."""
        stream = session.streams.pop(rid)
        if not stream.request.status.finished:
            self.worker.cancel((session.sid, rid))
        if reason == "disconnected":
            reason = "cancelled"  # never on the wire: the connection is gone
        session.conn.finish(rid, reason, round(stream.request.busy_s, 6))
        self.metrics.finished.labels(reason).inc()

    def _disconnect(self, session: _Session) -> None:
        self._sessions.pop(session.sid, None)
        self.metrics.connections.dec()
        session.conn.connection_lost()
        for rid, stream in session.streams.items():
            self.worker.cancel((session.sid, rid), disconnected=True)
            self.metrics.finished.labels("disconnected").inc()
        session.streams.clear()
