"""Run ``pdlink serve`` as a child process (end-to-end tests and ``pdlink bench assistant``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pdlink.common.child_process import ChildProcess, free_port

__all__ = ["AssistantProcess", "free_port"]


class AssistantProcess(ChildProcess):
    """``python -m pdlink serve --port P ...`` started at once; ``wait_ready()`` polls ``/health`` (bounded).
    A context manager; the server's output goes to ``log_path``; ``stop()`` is a graceful SIGTERM."""

    def __init__(self, *serve_args: str, host: str = "127.0.0.1", log_path: str | Path | None = None,
                 env: dict | None = None):
        port = free_port(host)
        cmd = [sys.executable, "-m", "pdlink", "serve", "--host", host, "--port", str(port), *serve_args]
        super().__init__(cmd, host=host, port=port, log_path=log_path, env=env)
        self.url = self.http_url

    def wait_ready(self, timeout_s: float = 240.0) -> str:
        """The base URL once ``/health`` answers 200; RuntimeError (with the log's tail) on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.http("/health", timeout_s=2.0)[0] == 200:
                    return self.url
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"pdlink serve did not get ready within {timeout_s:.0f} s (exit code {self.proc.poll()}):"
                           f"\n{self.log_tail()}")

    def health(self) -> dict:
        return json.loads(self.http("/health")[1])
