"""Run ``pdlink serve`` as a child process (end-to-end tests and ``pdlink bench assistant``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class AssistantProcess:
    """``python -m pdlink serve --port P ...`` started at once; ``wait_ready()`` polls ``/health`` (bounded).
    A context manager; the server's output goes to ``log_path``; ``stop()`` is a graceful SIGTERM."""

    def __init__(self, *serve_args: str, host: str = "127.0.0.1", log_path: str | Path | None = None,
                 env: dict | None = None):
        self.host, self.port = host, free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log_path = Path(log_path) if log_path else None
        cmd = [sys.executable, "-m", "pdlink", "serve", "--host", host, "--port", str(self.port), *serve_args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TVM_THREAD_POOL_SPIN_COUNT": "0", **(env or {})}
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

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

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def http(self, path: str, body: bytes | None = None, timeout_s: float = 30.0) -> tuple[int, str]:
        """``GET path`` (or ``POST`` ``body`` as JSON): (status, body text)."""
        req = urllib.request.Request(self.url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def health(self) -> dict:
        return json.loads(self.http("/health")[1])

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0.0 when absent)."""
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")  # in the order declared
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
            self._log = subprocess.DEVNULL
        return self.proc.returncode

    def __enter__(self) -> "AssistantProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
