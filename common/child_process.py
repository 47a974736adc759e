"""A pdlink server run as a child process: the shared part of ``ServerProcess`` (``pdlink cloud serve``) and
``AssistantProcess`` (``pdlink serve``), which end-to-end tests and benchmarks start for real."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ChildProcess:
    """``cmd`` started at once with unbuffered Python and idle TVM threads that sleep; its stderr (and its stdout
    unless ``pipe_stdout``) goes to ``log_path``; ``cores`` pins it (every thread) to those CPU cores. A context
    manager; ``stop()`` is a graceful SIGTERM, then SIGKILL."""

    def __init__(self, cmd: list[str], *, host: str, port: int, log_path: str | Path | None = None,
                 env: dict | None = None, cores: tuple[int, ...] | None = None, pipe_stdout: bool = False):
        self.host, self.port = host, port
        self.log_path = Path(log_path) if log_path else None
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TVM_THREAD_POOL_SPIN_COUNT": "0", **(env or {})}
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None  # in the child, before it starts
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if pipe_stdout else self._log,
                                     stderr=self._log if pipe_stdout else subprocess.STDOUT,
                                     text=True, env=full_env, preexec_fn=pin)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def http(self, path: str, body: bytes | None = None, timeout_s: float = 30.0) -> tuple[int, str]:
        """``GET path`` (or ``POST`` ``body`` as JSON) on the child's port: (status, body text)."""
        req = urllib.request.Request(self.http_url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` on ``/metrics`` (0.0 when absent)."""
        for family in text_string_to_metric_families(self.http("/metrics")[1]):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
