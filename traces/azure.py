"""Loader of the Azure LLM inference trace 2023 (CSV: TIMESTAMP, ContextTokens, GeneratedTokens)."""

from __future__ import annotations

import csv
import math
import re
from datetime import datetime
from pathlib import Path

from pdlink.traces.format_error import TraceFormatError
from pdlink.traces.request import TraceRequest

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
# "2023-11-16 18:17:03.9799600": seven fractional digits, more than datetime.fromisoformat takes on Python 3.10.
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?")


def load_azure_csv(path: str | Path) -> list[TraceRequest]:
    """Requests of an Azure LLM inference CSV in file order; arrivals in seconds after its first row.

    Raises FileNotFoundError when ``path`` is absent and :class:`TraceFormatError` (file:line) on a missing column,
    a bad timestamp or number, a negative length or a timestamp earlier than the row before."""
    path = Path(path)
    requests: list[TraceRequest] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(path, 1, f"empty file, expected the header {','.join(AZURE_COLUMNS)}")
        header = [name.strip() for name in header]
        missing = [c for c in AZURE_COLUMNS if c not in header]
        if missing:
            raise TraceFormatError(path, reader.line_num, f"missing column(s) {', '.join(missing)} "
                                                          f"(header: {','.join(header)})")
        columns = [header.index(c) for c in AZURE_COLUMNS]
        first = previous = None
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise TraceFormatError(path, line, f"{len(row)} fields, the header has {len(header)}")
            stamp, context, generated = (row[i].strip() for i in columns)
            at = _instant(stamp, path, line)
            if previous is not None and at < previous:
                raise TraceFormatError(path, line, f"TIMESTAMP {stamp} is earlier than the row before; "
                                                   "the trace must be in arrival order")
            first = at if first is None else first
            previous = at
            requests.append(TraceRequest(arrival_s=round((at[0] - first[0]) + (at[1] - first[1]), 7),
                                         input_tokens=_length(context, "ContextTokens", path, line),
                                         output_tokens=_length(generated, "GeneratedTokens", path, line)))
    return requests


def _instant(stamp: str, path: Path, line: int) -> tuple[int, float]:
    """A TIMESTAMP as (whole seconds since the epoch, fraction): kept apart so differences stay exact to the
    microsecond. Naive times are read as UTC; plain numbers are taken as seconds."""
    match = _TIMESTAMP.fullmatch(stamp)
    if match is None:
        try:
            seconds = float(stamp)
        except ValueError:
            raise TraceFormatError(path, line, f"bad TIMESTAMP {stamp!r} "
                                               "(expected e.g. 2023-11-16 18:17:03.9799600)") from None
        if not math.isfinite(seconds):
            raise TraceFormatError(path, line, f"bad TIMESTAMP {stamp!r}")
        return math.floor(seconds), seconds - math.floor(seconds)
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base.replace("T", " ") + _zone(zone))
    except ValueError as exc:
        raise TraceFormatError(path, line, f"bad TIMESTAMP {stamp!r}: {exc}") from None
    return int(moment.timestamp()), float(fraction) if fraction else 0.0


def _zone(zone: str | None) -> str:
    if not zone or zone == "Z":
        return "+00:00"
    return zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"


def _length(cell: str, column: str, path: Path, line: int) -> int:
    try:
        value = int(cell)
    except ValueError:
        raise TraceFormatError(path, line, f"{column} {cell!r} is not a whole number") from None
    if value < 0:
        raise TraceFormatError(path, line, f"{column} {value} is negative")
    return value
