"""Loader of Mooncake traces (JSON lines: timestamp [ms], input_length, output_length, hash_ids)."""

from __future__ import annotations

import json
from pathlib import Path

from pdlink.traces.format_error import TraceFormatError
from pdlink.traces.request import TraceRequest

MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


def load_mooncake_jsonl(path: str | Path) -> list[TraceRequest]:
    """Requests of a Mooncake JSONL trace in file order; arrivals in seconds after its first row.

    Raises FileNotFoundError when ``path`` is absent and :class:`TraceFormatError` (file:line) on bad JSON, a
    missing field, a non-integer or negative value, or a timestamp earlier than the row before."""
    path = Path(path)
    requests: list[TraceRequest] = []
    first = previous = None
    with path.open() as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(path, line, f"not JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise TraceFormatError(path, line, f"expected a JSON object, got {type(row).__name__}")
            missing = [k for k in MOONCAKE_FIELDS if k not in row]
            if missing:
                raise TraceFormatError(path, line, f"missing field(s) {', '.join(missing)}")
            stamp = _whole(row["timestamp"], "timestamp", path, line)
            if previous is not None and stamp < previous:
                raise TraceFormatError(path, line, f"timestamp {stamp} ms is earlier than the row before ({previous} "
                                                   "ms); the trace must be in arrival order")
            first = stamp if first is None else first
            previous = stamp
            hash_ids = row["hash_ids"]
            if not isinstance(hash_ids, list):
                raise TraceFormatError(path, line, f"hash_ids must be a list, got {type(hash_ids).__name__}")
            requests.append(TraceRequest(
                arrival_s=(stamp - first) / 1000.0,
                input_tokens=_whole(row["input_length"], "input_length", path, line),
                output_tokens=_whole(row["output_length"], "output_length", path, line),
                hash_ids=tuple(_whole(h, "hash_ids entry", path, line) for h in hash_ids)))
    return requests


def _whole(value, field: str, path: Path, line: int) -> int:
    """``value`` as a non-negative int (a float with no fraction is accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise TraceFormatError(path, line, f"{field} {value!r} is not a whole number")
    if value < 0:
        raise TraceFormatError(path, line, f"{field} {value} is negative")
    return int(value)
