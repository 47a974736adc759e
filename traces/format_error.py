"""The error a trace loader raises on a malformed row: it names the file and the line."""

from __future__ import annotations

from pathlib import Path


class TraceFormatError(ValueError):
    """A malformed trace row. ``path`` and ``line`` (1-based, the header counts) say where; the message starts
    with ``path:line:`` so editors and terminals can jump to it."""

    def __init__(self, path: str | Path, line: int, reason: str):
        self.path, self.line, self.reason = Path(path), line, reason
        super().__init__(f"{path}:{line}: {reason}")
