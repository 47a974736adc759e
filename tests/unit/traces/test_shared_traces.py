"""The real public traces in ../shared/traces (or $PDLINK_TRACES_DIR), when this machine has them."""

from __future__ import annotations

import pytest

from pdlink.traces import MOONCAKE_BLOCK_TOKENS, NAMED_TRACES, load_trace, traces_dir


@pytest.fixture(scope="module")
def folder():
    try:
        return traces_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"no shared traces on this machine: {exc}")


@pytest.mark.parametrize("name, rows", [("azure_code", 8819), ("mooncake", 12031)])
def test_named_traces_load_whole(folder, name, rows):
    if not (folder / NAMED_TRACES[name]).is_file():
        pytest.skip(f"{NAMED_TRACES[name]} is not in {folder}")
    workload = load_trace(name, folder)
    assert len(workload) == rows and workload.requests[0].arrival_s == 0.0
    assert workload.duration_s > 3000 and all(r.input_tokens > 0 for r in workload)
    if name == "mooncake":
        assert all(len(r.hash_ids) == -(-r.input_tokens // MOONCAKE_BLOCK_TOKENS) for r in workload)
