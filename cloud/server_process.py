"""Run ``pdlink cloud serve`` as a child process (benchmarks and end-to-end tests use a real server)."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path

from pdlink.common.child_process import ChildProcess, free_port

__all__ = ["ServerProcess", "free_port"]


class ServerProcess(ChildProcess):
    """``python -m pdlink cloud serve ...`` started at once; ``wait_ready()`` blocks (bounded) until
    it prints its ready line. Use as a context manager; stderr goes to ``log_path``; ``cores`` pins the server
    (all its threads) to those CPU cores."""

    def __init__(self, *serve_args: str, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | Path | None = None, env: dict | None = None, cores: tuple[int, ...] | None = None):
        port = port or free_port(host)
        cmd = [sys.executable, "-m", "pdlink", "cloud", "serve", "--host", host, "--port", str(port), *serve_args]
        super().__init__(cmd, host=host, port=port, log_path=log_path, env=env, cores=cores, pipe_stdout=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url: str | None = None

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout_s: float = 240.0) -> str:
        """The server's URL once it accepts connections. Raises RuntimeError (with the log's tail) when it
        exits or stays silent for ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if line is None:
                break
            if "ready" in line:
                self.url = line.strip().rsplit(" ", 1)[-1]
                return self.url
        self.stop()
        raise RuntimeError(f"cloud server did not get ready within {timeout_s:.0f} s "
                           f"(exit code {self.proc.poll()}):\n{self.log_tail()}")

    def health(self) -> dict:
        status, body = self.http("/healthz", timeout_s=10.0)
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}: {body}")
        return json.loads(body)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        return super().stop(timeout_s)
