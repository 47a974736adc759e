"""Run ``pdlink cloud serve`` as a child process (benchmarks and end-to-end tests use a real server)."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m pdlink cloud serve ...`` started at once; ``wait_ready()`` blocks (bounded) until
    it prints its ready line. Use as a context manager; stderr goes to ``log_path``; ``cores`` pins the server
    (all its threads) to those CPU cores."""

    def __init__(self, *serve_args: str, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | Path | None = None, env: dict | None = None, cores: tuple[int, ...] | None = None):
        self.host, self.port = host, port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        cmd = [sys.executable, "-m", "pdlink", "cloud", "serve", "--host", host, "--port", str(self.port), *serve_args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TVM_THREAD_POOL_SPIN_COUNT": "0", **(env or {})}
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None  # in the child, before the server starts
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=full_env,
                                     preexec_fn=pin)
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

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def http(self, path: str, timeout_s: float = 10.0) -> tuple[int, str]:
        """``GET path`` on the server's port: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}", timeout=timeout_s) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def health(self) -> dict:
        status, body = self.http("/healthz")
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}: {body}")
        return json.loads(body)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0.0 when absent)."""
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
