"""The cloud prefill server: a thin asyncio/websockets shell around the model worker.

Every websocket is a :class:`~pdlink.cloud.connection.Connection` (the Sans-I/O ``ServerConnection``
plus its streams), which turns ``prefill``/``stop``/``cancel`` into commands for the
:class:`ModelWorker` (the one thread that runs the model). Tokens come back from the worker thread, are
handed to the event loop and routed to their connection. ``GET /healthz`` and ``GET /metrics`` answer on
the same port from the worker's stats snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from typing import Callable

from websockets.asyncio.server import ServerConnection as WebSocket, serve

from pdlink.cloud.admission import Admission
from pdlink.cloud.backend import Backend, load_backend
from pdlink.cloud.config import CloudConfig
from pdlink.cloud.connection import Connection, deliver_outputs
from pdlink.cloud.http_endpoints import http_response
from pdlink.cloud.metrics import CloudMetrics
from pdlink.cloud.outputs import Output
from pdlink.cloud.request import Request
from pdlink.cloud.scheduler import Scheduler
from pdlink.cloud.slowed_backend import SlowedBackend
from pdlink.cloud.worker import ModelWorker
from pdlink.common.protocol import PROTOCOL_VERSION, ServerConnection

log = logging.getLogger(__name__)


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
        if cfg.min_step_s:
            self.backend = SlowedBackend(self.backend, cfg.min_step_s)
        self.worker = ModelWorker(Scheduler(self.backend, cfg.scheduler_config()), self._outputs_from_worker)
        self.metrics = CloudMetrics(self.worker.stats)
        self._connections: dict[int, Connection] = {}
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

            # one prefill chunk, and room for the 4 leading tokens in the context the server was sized for
            length = max(1, min(cfg.prefill_chunk_tokens, cfg.max_prompt_tokens + cfg.max_leading_tokens - 4))
            ids = self.tokenizer.encode(real_text(cfg.prefill_chunk_tokens * 8))[:length]
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

    async def admit(self, request: Request) -> Admission:
        """Admit or refuse a new request (the connection's one way in; a cluster gateway places it instead)."""
        return self.worker.admit(request)

    # ------------------------------------------------------------------ HTTP on the same port

    def health(self) -> dict:
        """What ``GET /healthz`` answers."""
        stats = self.worker.stats()
        return {"status": "ok" if self.worker.alive else "model_worker_stopped", "model_id": self.cfg.model_id,
                "tokenizer_hash": self.tokenizer.hash, "protocol_version": PROTOCOL_VERSION,
                "backend": self.backend.info.get("backend"), "connections": len(self._connections),
                "requests_in_flight": stats.requests_live, "queue_depth": stats.queued, "decoding": stats.decoding,
                "kv_sequences": stats.kv_sequences, "prefill_tok_s": round(stats.prefill_tok_s, 1),
                "busy_s": round(stats.busy_s, 3)}

    def _http(self, ws: WebSocket, request):
        return http_response(ws, request, health=self.health, metrics_text=self.metrics.render,
                             num_connections=len(self._connections), max_connections=self.cfg.max_connections,
                             banner="pdlink cloud")

    # ------------------------------------------------------------------ websocket connections

    async def _handle(self, ws: WebSocket) -> None:
        cfg, info = self.cfg, self.backend.info
        protocol = ServerConnection(cfg.limits(), cfg.auth_token, cfg.model_id, self.tokenizer.hash,
                                    self.backend.vocab_size, server=f"pdlink-cloud ({info.get('backend')} on "
                                    f"{info.get('device')}, {info.get('threads')} threads)",
                                    features=["refine"] if self.backend.supports_refinement else [],
                                    numerics=self.backend.numerics)
        connection = Connection(next(self._ids), ws, protocol, self)
        self._connections[connection.id] = connection
        self.metrics.connections.inc()
        try:
            await connection.receive()
        finally:
            del self._connections[connection.id]
            self.metrics.connections.dec()
            await connection.close()

    # ------------------------------------------------------------------ outputs from the worker thread

    def _outputs_from_worker(self, outputs: list[Output]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[Output]) -> None:
        deliver_outputs(self._connections, outputs)
