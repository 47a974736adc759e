"""The `pdlink` command as a user runs it: the JSON contract and every bad input's clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model
PDLINK = [sys.executable, "-m", "pdlink.cli"]


def pdlink(*args, check=True):
    env = {**os.environ, "TVM_THREAD_POOL_SPIN_COUNT": "0"}
    proc = subprocess.run([*PDLINK, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pdlink {args} failed:\n{proc.stderr}")
    return proc


def test_generate_json_contract(f32_package, f32_engine):
    from tests.conftest import device_answer

    proc = pdlink("generate", "--package", f32_package, "--prompt", "What is the capital of France?",
                  "--max-tokens", 12, "--temperature", 0, "--json")
    out = json.loads(proc.stdout)
    assert {"text", "token_ids", "prompt_tokens"} <= set(out)
    ids = f32_engine.tokenizer.encode_chat("What is the capital of France?")
    expected = device_answer(f32_engine, ids, 12)
    assert out["token_ids"] == expected.token_ids and out["text"] == expected.text
    assert out["prompt_tokens"] == len(ids) and "Paris" in out["text"]


def test_generate_prompt_file_and_raw(f32_package, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("The capital of France is")
    out = json.loads(pdlink("generate", "--package", f32_package, "--prompt-file", prompt, "--raw",
                            "--max-tokens", 4, "--temperature", 0, "--json").stdout)
    assert out["prompt_tokens"] == 5 and len(out["token_ids"]) == 4


def _error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_compile_bad_inputs(tmp_path):
    _error(pdlink("compile", "--model", tmp_path / "nope", "--output", tmp_path / "o", check=False), "does not exist")
    (tmp_path / "notes.txt").write_text("hi")
    _error(pdlink("compile", "--model", tmp_path / "notes.txt", "--output", tmp_path / "o", check=False), "not a .gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    _error(pdlink("compile", "--model", bad, "--output", tmp_path / "o", check=False), "not a readable GGUF")
    _error(pdlink("compile", "--model", tmp_path, "--output", tmp_path / "o", check=False), "not an HF model directory")
    _error(pdlink("compile", "--model", "smollm2-135m", "--target", "vax", "--output", tmp_path / "o", check=False),
           "unknown target 'vax'", "host")
    _error(pdlink("compile", "--model", "smollm2-135m", "--quant", "q2", "--output", tmp_path / "o", check=False),
           "unknown quantization")
    assert not (tmp_path / "o").exists()


def _linked_copy(package: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in package.iterdir():
        (dest / f.name).symlink_to(f)
    return dest


def test_tampered_and_missing_packages_are_refused(f32_package, tmp_path):
    _error(pdlink("generate", "--package", tmp_path / "none", "--prompt", "hi", "--json", check=False), "does not exist")
    copy = _linked_copy(f32_package, tmp_path / "pkg")
    (copy / "tokenizer.json").unlink()
    shutil.copy(f32_package / "tokenizer.json", copy / "tokenizer.json")
    with open(copy / "tokenizer.json", "a") as f:
        f.write(" ")
    _error(pdlink("generate", "--package", copy, "--prompt", "hi", "--json", check=False), "sha256", "tampered")


def test_prompt_longer_than_the_context_is_refused(f32_package):
    _error(pdlink("generate", "--package", f32_package, "--prompt", "word " * 400, "--context", 128, "--json",
                  check=False), "context window")


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-k", "-3"], "top_k"),
    (["--max-tokens", "0"], "max_tokens"),
])
def test_invalid_sampling_parameters_are_refused(f32_package, flags, message):
    _error(pdlink("generate", "--package", f32_package, "--prompt", "hi", *flags, "--json", check=False), message)


def test_missing_prompt_file_is_refused(f32_package, tmp_path):
    _error(pdlink("generate", "--package", f32_package, "--prompt-file", tmp_path / "x.txt", check=False), "does not exist")


def test_profile_measures_and_stores_the_device(q4_1_package, tmp_path):
    out = tmp_path / "profile.json"
    proc = pdlink("profile", "--package", q4_1_package, "--threads", 1, "--output", out)
    printed, stored = json.loads(proc.stdout), json.loads(out.read_text())
    assert printed["path"] == str(out) and stored["name"] == "measured" and not stored["emulated"]
    assert stored["prefill_tok_s"] > 1 and 0 < stored["decode_s_per_token"] < 5


def test_device_mode_json_has_the_session_keys(q4_1_package):
    proc = pdlink("generate", "--package", q4_1_package, "--prompt", "Name a color.", "--max-tokens", 6,
                  "--temperature", 0, "--json", "--threads", 1)
    out = json.loads(proc.stdout)
    assert out["mode"] == "device" and out["origins"] == ["device"] * len(out["token_ids"])
    assert out["handover_index"] is None and out["fallback"] is None and out["cloud_busy_s"] == 0.0
    assert out["ttft_s"] > 0 and out["max_gap_s"] >= 0
