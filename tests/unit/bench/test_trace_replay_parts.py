"""The model-free parts of the trace replay: which requests it sends, the device profile it emulates, the
lossless check across modes, the sweep's saturation point, and the CLI's clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pdlink.bench.device_sweep import saturation
from pdlink.bench.replay_request import replay_requests, trace_workload
from pdlink.edge.device_profile import resolve_profile
from pdlink.bench.replay_tokens import lossless_check, prompt_digest, update_lossless
from pdlink.traces.report import TraceBenchConfig

TRACE_ROWS = [("2023-11-16 18:17:03.0000000", 5000, 10), ("2023-11-16 18:17:04.0000000", 200, 300),
              ("2023-11-16 18:17:05.0000000", 1500, 0), ("2023-11-16 18:17:07.0000000", 800, 40)]


class CharTokenizer:
    def encode(self, text):
        return [ord(c) % 5000 for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{a},{b},{c}\n" for a, b, c in TRACE_ROWS))
    return path


def test_requests_are_filtered_capped_cut_and_scaled(trace, tmp_path):
    cfg = TraceBenchConfig(output=str(tmp_path), trace=str(trace), min_prompt_tokens=500, max_requests=2,
                           max_prompt_tokens=1000, max_output_tokens=32, rate_scale=2.0)
    reqs = replay_requests(cfg, CharTokenizer())
    assert [len(r.prompt_ids) for r in reqs] == [1000, 1000]  # 5000 and 1500 cut; 200 filtered; 800 beyond the cap
    assert [r.trace_prompt_tokens for r in reqs] == [5000, 1500]
    assert [r.max_tokens for r in reqs] == [10, 1]  # a zero-length answer becomes one token
    assert [r.arrival_s for r in reqs] == [0.0, 1.0]  # 2 s apart in the trace, twice as fast
    assert reqs[0].prompt_ids != reqs[1].prompt_ids
    assert replay_requests(cfg, CharTokenizer()) == reqs  # seeded


def test_bad_trace_folder_and_profile(trace, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        trace_workload(TraceBenchConfig(trace=str(tmp_path / "nope.csv")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trace_workload(TraceBenchConfig(trace="azure_code", traces_dir=str(tmp_path / "no-folder")))
    with pytest.raises(ValueError, match="no request with at least"):
        trace_workload(TraceBenchConfig(trace=str(trace), min_prompt_tokens=100_000))
    with pytest.raises(ValueError, match="unknown device profile 'pocket-calculator'"):
        resolve_profile("pocket-calculator")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "prefill_tok_s": -1, "decode_s_per_token": 0.01}')
    with pytest.raises(ValueError, match="prefill_tok_s"):
        resolve_profile(str(bad))
    good = tmp_path / "fast.json"
    good.write_text('{"name": "fast", "prefill_tok_s": 2000, "decode_s_per_token": 0.01}')
    assert resolve_profile(str(good)).name == "fast" and resolve_profile("phone").name == "phone"


def _rows(answers, fallbacks=()):
    return [{"index": i, "prompt": prompt_digest([i]), "fallback": "too slow" if i in fallbacks else None,
             "token_ids": ids} for i, ids in enumerate(answers)]


def test_lossless_check_leaves_out_fallbacks_and_other_prompts():
    device = _rows([[1, 2], [3, 4], [5, 6]])
    assert lossless_check(_rows([[1, 2], [3, 4], [5, 6]]), device)["lossless"]
    check = lossless_check(_rows([[1, 2], [3, 9], [0, 0]], fallbacks=(2,)), device)
    assert (check["equal"], check["compared"], check["differ"], check["excluded_fallback"]) == (1, 2, [1], 1)
    other = [{**r, "prompt": "x"} for r in _rows([[1, 2]])]
    assert lossless_check(other, device)["excluded_no_device_answer"] == 1


def test_update_lossless_writes_into_the_reports(tmp_path):
    for mode, answers in (("device", [[1], [2]]), ("pd", [[1], [2]]), ("cloud", [[1], [7]])):
        (tmp_path / f"trace-{mode}-tokens.json").write_text(json.dumps({"mode": mode, "requests": _rows(answers)}))
        (tmp_path / f"trace-{mode}.json").write_text("{}")
    results = update_lossless(tmp_path)
    assert results["pd"]["lossless"] and not results["cloud"]["lossless"]
    assert json.loads((tmp_path / "trace-pd.json").read_text())["lossless"]["equal"] == 2


def test_saturation_is_where_ttft_grows():
    points = [{"devices": n, "ttft_p50_s": t} for n, t in ((1, 1.0), (2, 1.2), (4, 2.0), (8, 5.0))]
    assert saturation(points) == 4
    assert saturation(points[:2]) is None


def test_cli_bad_inputs_exit_2(tmp_path, trace):
    env = {**os.environ, "PDLINK_TRACES_DIR": str(tmp_path / "missing")}

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "pdlink.cli", "bench", "trace", "--output", str(tmp_path),
                               *args], capture_output=True, text=True, env=env, timeout=120)

    for args, fragment in ((["--trace", str(tmp_path / "nope.csv")], "neither a file"),
                           (["--trace", "azure_code"], "does not exist"),
                           (["--trace", str(trace), "--device-profile", "toaster"], "unknown device profile 'toaster'")):
        proc = bench(*args)
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
