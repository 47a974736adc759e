"""The lossless check of a trace replay: every mode's answers (token ids) are kept beside its report in
``trace-<mode>-tokens.json``; pd and cloud answers are compared with device mode's, request by request.

With greedy sampling, the same model on both sides and refinement off, a pd answer must equal the
device-only answer token for token unless the request fell back (then the device finished alone from what it
had, which is still lossless but not what is being checked)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pdlink.traces.report import RequestRecord

COMPARED_MODES = ("pd", "cloud")  # each compared with device mode


def tokens_path(folder: str | Path, mode: str) -> Path:
    return Path(folder) / f"trace-{mode}-tokens.json"


def prompt_digest(prompt_ids) -> str:
    """A short hash of a prompt's ids: answers are compared only for the same prompt."""
    return hashlib.sha1(json.dumps(list(prompt_ids)).encode()).hexdigest()[:16]


def write_tokens(folder: str | Path, mode: str, records: list[RequestRecord], prompts: dict[int, str]) -> Path:
    """Write the sidecar of ``mode``: per request its index, prompt digest (``prompts``: index -> digest),
    fallback and generated token ids."""
    path = tokens_path(folder, mode)
    rows = [{"index": r.index, "prompt": prompts[r.index], "fallback": r.fallback, "token_ids": list(r.token_ids)}
            for r in records]
    path.write_text(json.dumps({"mode": mode, "requests": rows}))
    return path


def read_tokens(folder: str | Path, mode: str) -> list[dict] | None:
    """The rows of ``mode``'s sidecar, or None when there is none."""
    path = tokens_path(folder, mode)
    return json.loads(path.read_text())["requests"] if path.is_file() else None


def lossless_check(rows: list[dict], device_rows: list[dict]) -> dict:
    """Compare answers with device mode's, request by request (same index and prompt); requests with a
    fallback are left out. Returns ``equal`` / ``compared`` counts, the indices that differ, and how many
    were left out and why."""
    device = {(r["index"], r["prompt"]): r for r in device_rows}
    equal, differ, fallbacks, unmatched = 0, [], 0, 0
    for r in rows:
        other = device.get((r["index"], r["prompt"]))
        if other is None:
            unmatched += 1
        elif r["fallback"] is not None:
            fallbacks += 1
        elif r["token_ids"] == other["token_ids"]:
            equal += 1
        else:
            differ.append(r["index"])
    compared = equal + len(differ)
    return {"equal": equal, "compared": compared, "lossless": compared > 0 and not differ, "differ": differ,
            "excluded_fallback": fallbacks, "excluded_no_device_answer": unmatched,
            "against": "trace-device-tokens.json"}


def update_lossless(folder: str | Path) -> dict[str, dict]:
    """Where device mode's sidecar and a pd or cloud sidecar both exist in ``folder``: compare them and write
    the result as ``lossless`` into that mode's report (``trace-<mode>.json``). Returns mode -> result."""
    device_rows = read_tokens(folder, "device")
    if device_rows is None:
        return {}
    results = {}
    for mode in COMPARED_MODES:
        rows = read_tokens(folder, mode)
        if rows is None:
            continue
        results[mode] = lossless_check(rows, device_rows)
        report = Path(folder) / f"trace-{mode}.json"
        if report.is_file():
            data = json.loads(report.read_text())
            data["lossless"] = results[mode]
            report.write_text(json.dumps(data, indent=1))
    return results
