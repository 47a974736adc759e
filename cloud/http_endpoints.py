"""The plain-HTTP side of a cloud websocket endpoint (single server and cluster gateway alike): ``GET
/healthz`` (JSON, 503 when not ok), ``GET /metrics`` (Prometheus text), 404 for anything that is not a
websocket upgrade, 503 past the connection limit; ``None`` lets the websocket handshake go on."""

from __future__ import annotations

import json
from typing import Callable

from pdlink.cloud.metrics import CONTENT_TYPE


def http_response(ws, request, *, health: Callable[[], dict], metrics_text: Callable[[], bytes],
                  num_connections: int, max_connections: int, banner: str):
    """The response to ``request`` on ``ws`` (a websockets ``process_request`` hook's answer)."""
    path = request.path.split("?", 1)[0]
    if path in ("/healthz", "/metrics"):
        if path == "/healthz":
            report = health()
            status = 200 if report["status"] == "ok" else 503
            response, kind = ws.respond(status, json.dumps(report) + "\n"), "application/json"
        else:
            response, kind = ws.respond(200, metrics_text().decode()), CONTENT_TYPE
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = kind
        return response
    if "websocket" not in request.headers.get("Upgrade", "").lower():
        return ws.respond(404, f"{banner}: websocket protocol v1 at /, GET /healthz, GET /metrics\n")
    if num_connections >= max_connections:
        return ws.respond(503, f"too many connections (limit {max_connections})\n")
    return None
