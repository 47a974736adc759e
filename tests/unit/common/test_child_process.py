"""``ChildProcess`` (pdlink.common.child_process): a real child serving /metrics on loopback."""

from __future__ import annotations

import sys
import time

from pdlink.common.child_process import ChildProcess, free_port

SERVE_METRICS = """
import http.server, sys
BODY = b'''# HELP demo_requests_total Requests.
# TYPE demo_requests_total counter
demo_requests_total{endpoint="chat",status="ok"} 3.0
demo_requests_total{endpoint="chat",status="error"} 1.0
'''
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()
        self.wfile.write(BODY if self.path == "/metrics" else b"no")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_child_answers_http_and_its_metrics_are_read_by_exact_labels(tmp_path):
    port = free_port()
    with ChildProcess([sys.executable, "-c", SERVE_METRICS, str(port)], host="127.0.0.1", port=port,
                      log_path=tmp_path / "child.log") as child:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = child.http("/metrics", timeout_s=2.0)
                break
            except OSError:
                assert time.monotonic() < deadline and child.alive(), child.log_tail()
                time.sleep(0.1)
        assert status == 200 and child.http("/other")[0] == 404
        assert child.metric("demo_requests_total", status="ok", endpoint="chat") == 3.0  # any label order
        assert child.metric("demo_requests_total", endpoint="chat", status="error") == 1.0
        assert child.metric("demo_requests_total", endpoint="chat") == 0.0  # not exactly these labels
        assert child.metric("absent_total") == 0.0
    assert not child.alive() and child.proc.returncode is not None
