"""The gateway: the one websocket endpoint of the disaggregated cloud, speaking protocol v1 like
``cloud/server.py`` (the same :class:`~pdlink.cloud.connection.Connection`, so the same hardening: malformed,
oversized, bad auth, flood), so devices notice nothing.

Each accepted prompt is classified into a scenario group (``cloud/cluster/groups.py``) and placed by the
router (``cloud/cluster/forwarding.py``); a :class:`~pdlink.cloud.cluster.flow.RequestFlow` then carries it
through a prefill and a decode instance. ``GET /healthz`` and ``GET /metrics`` answer on the same port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Callable

from websockets.asyncio.server import ServerConnection as WebSocket, serve

from pdlink.cloud.admission import Admission
from pdlink.cloud.cluster.cluster_metrics import ClusterMetrics
from pdlink.cloud.cluster.config import ClusterConfig
from pdlink.cloud.cluster.flow import RequestFlow
from pdlink.cloud.cluster.forwarding import OnDemandRouter, Pools, QueueReportRouter
from pdlink.cloud.cluster.gateway_model import ModelCard, model_card
from pdlink.cloud.cluster.handle import InstanceDied
from pdlink.cloud.cluster.groups import RequestFeatures, classify, prefix_hash
from pdlink.cloud.cluster.runtime import Runtime
from pdlink.cloud.config import CloudConfig
from pdlink.cloud.connection import Connection, deliver_outputs
from pdlink.cloud.http_endpoints import http_response
from pdlink.cloud.metrics import CloudMetrics
from pdlink.cloud.outputs import Output
from pdlink.cloud.request import Request
from pdlink.cloud.scheduler import SchedulerStats
from pdlink.common.protocol import PROTOCOL_VERSION, ServerConnection

log = logging.getLogger(__name__)


class Gateway:
    """Serve protocol v1 over a cluster of instances. ``await serve_forever()``; ``request_shutdown()`` ends it."""

    def __init__(self, cfg: CloudConfig, cluster: ClusterConfig, runtime: Runtime | None = None, tokenizer=None):
        self.cfg, self.cluster = cfg, cluster
        self.specs = cluster.instance_specs(cfg)
        self.rules = cluster.rules()
        self.runtime = runtime or Runtime(cluster)
        self.pools = Pools((s.name, s.group, s.role) for s in self.specs)
        self.router = OnDemandRouter(self.pools, cfg.ttft_budget_s, cluster.retry_s) \
            if cluster.router == "on_demand" else QueueReportRouter(self.pools)
        self.worker = _Flows(self)
        self.metrics = CloudMetrics(self.worker.stats)
        self.metrics_cluster = ClusterMetrics(self.metrics.registry)
        self.flows: dict[tuple, RequestFlow] = {}
        self.instance_stats: dict[str, dict] = {}
        self.backend: ModelCard | None = None
        self.tokenizer = tokenizer  # None: rebuilt from what the instances send
        self.handles = self.runtime.handles
        self._connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._shutdown: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the instances and learn the model from them (``serve_forever`` calls it)."""
        await self.runtime.start(self.specs)
        self.backend, tokenizer = model_card(self.runtime.describe, self.cfg.model_id, need_tokenizer=not self.tokenizer)
        self.tokenizer = self.tokenizer or tokenizer
        for spec in self.specs:
            self.metrics_cluster.alive.labels(spec.group, spec.name, spec.role).set(1)
            self.metrics_cluster.open.labels(spec.group, spec.name, spec.role).set(0)
        self.spawn(self._poll_stats())

    async def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        cfg = self.cfg
        self._loop, self._shutdown = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.start()
            tls = None
            if cfg.tls:
                tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            slack = max(4096, cfg.max_message_bytes // 16)
            async with serve(self._handle, cfg.host, cfg.port, process_request=self._http, ssl=tls,
                             max_size=cfg.max_message_bytes + slack, open_timeout=cfg.handshake_timeout_s,
                             ping_interval=cfg.ping_interval_s, ping_timeout=cfg.ping_interval_s,
                             compression=None, server_header="pdlink-cloud") as server:
                self.port = server.sockets[0].getsockname()[1]
                url = f"{'wss' if cfg.tls else 'ws'}://{cfg.host}:{self.port}"
                log.info("gateway for %s: %d instances (%s routing) on %s", cfg.model_id, len(self.specs),
                         self.cluster.router, url)
                if on_ready:
                    on_ready(url)
                await self._shutdown.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await self.runtime.close()

    def request_shutdown(self) -> None:
        if self._loop and self._shutdown:
            self._loop.call_soon_threadsafe(self._shutdown.set)

    # ------------------------------------------------------------------ what connections call

    async def admit(self, request: Request) -> Admission:
        """Classify, then place by forwarding; an accepted request's flow runs as its own task."""
        if request.num_prompt_tokens + request.max_tokens > self.backend.context_window:
            raise ValueError(f"{request.num_prompt_tokens} prompt + {request.max_tokens} leading tokens exceed the "
                             f"context window of {self.backend.context_window}")
        if len(self.flows) >= self.cfg.max_concurrent_requests:
            return Admission(False, 0.0, f"the server is at its limit of {self.cfg.max_concurrent_requests} "
                             "requests", 1.0)
        connection = self._connections.get(request.key[0])
        hello = connection.protocol.hello if connection else None
        app = (hello.client or hello.model_id) if hello else ""
        group = classify(self.rules, RequestFeatures(app, prefix_hash(request.prompt_token_ids),
                                                     request.num_prompt_tokens))
        flow = RequestFlow(self, request, group)
        self.flows[request.key] = flow
        verdict = await flow.place()
        if not verdict.accepted or flow.ended:
            self.flows.pop(request.key, None)
            return verdict
        flow.task = self.spawn(flow.run())
        return verdict

    def deliver(self, outputs: list[Output]) -> None:
        deliver_outputs(self._connections, outputs)

    # ------------------------------------------------------------------ what flows call

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()  # a cancel/stop sent to an instance that is gone is moot
            if not isinstance(exc, InstanceDied):
                log.error("gateway task failed: %r", exc)

    def instance_died(self, name: str) -> None:
        if self.pools.by_name[name].alive:
            log.warning("instance %s is gone; its requests move to the others", name)
        self.pools.died(name)
        self.instance_stats.pop(name, None)  # its last report is history
        state = self.pools.by_name[name]
        self.metrics_cluster.alive.labels(state.group, name, state.role).set(0)

    def track_open(self, name: str, count: bool) -> None:
        """A request is open on ``name`` now (``count``: not yet counted by the forwarding core)."""
        if count:
            self.pools.opened(name)
        state = self.pools.by_name[name]
        self.metrics_cluster.open.labels(state.group, name, state.role).set(state.open)

    def track_close(self, name: str) -> None:
        self.pools.closed(name)
        state = self.pools.by_name[name]
        self.metrics_cluster.open.labels(state.group, name, state.role).set(state.open)

    # ------------------------------------------------------------------ health, metrics, reports

    async def _poll_stats(self) -> None:
        interval = self.cluster.report_interval_s if self.cluster.router == "queue_report" else 1.0
        while True:
            await self._refresh_stats()
            await asyncio.sleep(interval)

    async def _refresh_stats(self) -> None:
        now = time.perf_counter()
        names = [n for n, s in self.pools.by_name.items() if s.alive]
        answers = await asyncio.gather(*(self.handles[n].call("stats") for n in names), return_exceptions=True)
        for name, answer in zip(names, answers):
            if isinstance(answer, dict) and self.pools.by_name[name].alive:
                self.instance_stats[name] = answer
                self.pools.report(name, answer["open"], now)
            elif isinstance(answer, Exception):
                self.instance_died(name)
                self.instance_stats.pop(name, None)

    def health(self) -> dict:
        stats = self.worker.stats()
        alive = {n: s.alive for n, s in self.pools.by_name.items()}
        return {"status": "ok" if any(alive.values()) else "no_live_instances", "model_id": self.cfg.model_id,
                "tokenizer_hash": self.backend.tokenizer_hash, "protocol_version": PROTOCOL_VERSION,
                "backend": self.backend.info.get("backend"), "connections": len(self._connections),
                "requests_in_flight": stats.requests_live, "queue_depth": stats.queued, "decoding": stats.decoding,
                "kv_sequences": stats.kv_sequences, "busy_s": round(stats.busy_s, 3), "router": self.cluster.router,
                "instances": {n: {**self.instance_stats.get(n, {}), "alive": alive[n],
                                  "group": self.pools.by_name[n].group, "role": self.pools.by_name[n].role,
                                  "open": self.pools.by_name[n].open,  # the gateway's own count
                                  "pid": self.runtime.describe.get(n, {}).get("pid")} for n in self.pools.by_name}}

    async def _http(self, ws: WebSocket, request):
        if request.path.split("?", 1)[0] in ("/healthz", "/metrics"):
            await self._refresh_stats()
        return http_response(ws, request, health=self.health, metrics_text=self.metrics.render,
                             num_connections=len(self._connections), max_connections=self.cfg.max_connections,
                             banner="pdlink cloud gateway")

    async def _handle(self, ws: WebSocket) -> None:
        cfg, card = self.cfg, self.backend
        protocol = ServerConnection(cfg.limits(), cfg.auth_token, cfg.model_id, card.tokenizer_hash, card.vocab_size,
                                    server=f"pdlink-cloud gateway ({len(self.specs)} instances, "
                                    f"{card.info.get('backend')})", numerics=card.numerics)
        connection = Connection(next(self._ids), ws, protocol, self)
        self._connections[connection.id] = connection
        self.metrics.connections.inc()
        try:
            await connection.receive()
        finally:
            del self._connections[connection.id]
            self.metrics.connections.dec()
            await connection.close()


@dataclass
class _Flows:
    """The ``worker`` a :class:`Connection` talks to: stop and cancel go to the request's flow."""

    gateway: Gateway

    def stop(self, key, after_index: int) -> None:
        flow = self.gateway.flows.get(key)
        if flow is not None:
            flow.stop(after_index)

    def cancel(self, request: Request, disconnected: bool = False) -> float:
        flow = self.gateway.flows.pop(request.key, None)
        return flow.cancel() if flow is not None else 0.0

    def stats(self) -> SchedulerStats:
        live = self.gateway.instance_stats.values()
        return SchedulerStats(len(self.gateway.flows), sum(s["queued"] for s in live),
                              sum(s["decoding"] for s in live), sum(s["kv_sequences"] for s in live), 0.0, 0.0,
                              sum(s["busy_s"] for s in live), 0)
