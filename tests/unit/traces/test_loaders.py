"""Azure CSV and Mooncake JSONL loaders on small temp files: well-formed rows, and malformed rows named by file:line."""

from __future__ import annotations

import json
import re

import pytest

from pdlink.traces import TraceFormatError, TraceRequest, load_azure_csv, load_mooncake_jsonl

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _azure(tmp_path, body: str, header: str = AZURE_HEADER):
    path = tmp_path / "trace.csv"
    path.write_text(header + body)
    return path


def _mooncake(tmp_path, *rows):
    path = tmp_path / "trace.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(ts=200, n_in=1024, n_out=10, hash_ids=(0, 1)):
    return {"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": list(hash_ids)}


def test_azure_rows_become_requests_with_relative_arrivals(tmp_path):
    path = _azure(tmp_path, "2023-11-16 18:17:03.9799600,4808,10\n"
                            "2023-11-16 18:17:04.0319600,3180,8\n"
                            "\n"
                            "2023-11-16 18:18:03.9799600,0,0\n")
    requests = load_azure_csv(path)
    assert [(r.input_tokens, r.output_tokens, r.hash_ids) for r in requests] == [(4808, 10, ()), (3180, 8, ()),
                                                                                 (0, 0, ())]
    assert [r.arrival_s for r in requests] == [0.0, pytest.approx(0.052, abs=1e-9), 60.0]


def test_azure_columns_may_come_in_any_order_with_extras(tmp_path):
    path = _azure(tmp_path, "7,2023-11-16 18:17:03,x,5\n7,2023-11-16 18:17:05.5,y,6\n",
                  header="GeneratedTokens,TIMESTAMP,Other,ContextTokens\n")
    assert load_azure_csv(path) == [TraceRequest(0.0, 5, 7), TraceRequest(2.5, 6, 7)]


@pytest.mark.parametrize("body, line, words", [
    ("2023-11-16 18:17:03.1,12x,10\n", 2, "ContextTokens '12x' is not a whole number"),
    ("2023-11-16 18:17:03.1,12,10\n2023-11-16 18:17:04.1,12,-3\n", 3, "GeneratedTokens -3 is negative"),
    ("2023-11-16 18:17:03.1,12,10\nyesterday,12,10\n", 3, "bad TIMESTAMP 'yesterday'"),
    ("2023-11-16 18:17:03.1,12,10\n2023-11-16 18:17:02.1,12,10\n", 3, "earlier than the row before"),
    ("2023-11-16 18:17:03.1,12,10\n\n2023-11-16 18:17:04.1,12\n", 4, "2 fields, the header has 3"),
])
def test_azure_malformed_rows_name_file_and_line(tmp_path, body, line, words):
    path = _azure(tmp_path, body)
    with pytest.raises(TraceFormatError, match=f"^{re.escape(str(path))}:{line}: .*{words}") as info:
        load_azure_csv(path)
    assert (info.value.path, info.value.line) == (path, line)


def test_azure_missing_column_names_it(tmp_path):
    path = _azure(tmp_path, "2023-11-16 18:17:03,12\n", header="TIMESTAMP,ContextTokens\n")
    with pytest.raises(TraceFormatError, match=f"^{re.escape(str(path))}:1: missing column.*GeneratedTokens"):
        load_azure_csv(path)


def test_mooncake_rows_become_requests(tmp_path):
    path = _mooncake(tmp_path, _row(0, 1000, 5, (0, 1)), "", _row(1500, 700, 3, (0, 2)), _row(1500, 10, 1, ()))
    assert load_mooncake_jsonl(path) == [TraceRequest(0.0, 1000, 5, (0, 1)), TraceRequest(1.5, 700, 3, (0, 2)),
                                         TraceRequest(1.5, 10, 1, ())]


def test_mooncake_arrivals_are_relative_to_the_first_row(tmp_path):
    path = _mooncake(tmp_path, _row(2000), _row(2250))
    assert [r.arrival_s for r in load_mooncake_jsonl(path)] == [0.0, 0.25]


@pytest.mark.parametrize("bad, words", [
    ('{"timestamp": 5, "input_length": 1', "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"timestamp": 5, "input_length": 1, "hash_ids": []}, "missing field.*output_length"),
    (_row(n_in="12"), "input_length '12' is not a whole number"),
    (_row(n_in=1.5), "input_length 1.5 is not a whole number"),
    (_row(n_out=True), "output_length True is not a whole number"),
    (_row(n_out=-1), "output_length -1 is negative"),
    (_row(hash_ids=(0, -4)), "hash_ids entry -4 is negative"),
    ({**_row(), "hash_ids": 3}, "hash_ids must be a list"),
    (_row(ts=50), "timestamp 50 ms is earlier than the row before"),
])
def test_mooncake_malformed_rows_name_file_and_line(tmp_path, bad, words):
    path = _mooncake(tmp_path, _row(ts=100), bad)
    with pytest.raises(TraceFormatError, match=f"^{re.escape(str(path))}:2: .*{words}"):
        load_mooncake_jsonl(path)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_mooncake_jsonl(tmp_path / "absent.jsonl")
