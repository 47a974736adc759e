"""Where traces are found: explicit folder, else $PDLINK_TRACES_DIR, else ../shared/traces from the current
directory; a missing folder is an error that names both the flag and the variable."""

from __future__ import annotations

import pytest

from pdlink.traces import NAMED_TRACES, TRACES_DIR_ENV, load_trace, trace_path, traces_dir


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "traces"
    d.mkdir()
    (d / NAMED_TRACES["azure_code"]).write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5,1\n")
    (d / NAMED_TRACES["mooncake"]).write_text('{"timestamp": 0, "input_length": 9, "output_length": 2, '
                                              '"hash_ids": [0]}\n')
    return d


def test_explicit_folder_wins_over_the_variable(folder, tmp_path, monkeypatch):
    monkeypatch.setenv(TRACES_DIR_ENV, str(tmp_path / "elsewhere"))
    assert traces_dir(folder) == folder


def test_variable_is_used_without_a_folder(folder, monkeypatch):
    monkeypatch.setenv(TRACES_DIR_ENV, str(folder))
    assert traces_dir() == folder
    assert load_trace("mooncake").requests[0].input_tokens == 9


def test_default_is_shared_traces_beside_the_current_directory(folder, tmp_path, monkeypatch):
    monkeypatch.delenv(TRACES_DIR_ENV, raising=False)
    (tmp_path / "shared").mkdir()
    folder.rename(tmp_path / "shared" / "traces")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    workload = load_trace("azure_code")
    assert (workload.name, len(workload)) == ("azure_code", 1)


@pytest.mark.parametrize("how", ["flag", "variable", "default"])
def test_a_missing_folder_names_the_flag_and_the_variable(tmp_path, monkeypatch, how):
    monkeypatch.delenv(TRACES_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere"
    if how == "variable":
        monkeypatch.setenv(TRACES_DIR_ENV, str(missing))
    with pytest.raises(FileNotFoundError) as info:
        traces_dir(missing if how == "flag" else None)
    message = str(info.value)
    assert "--traces-dir" in message and TRACES_DIR_ENV in message and "AzurePublicDataset" in message


def test_a_named_trace_missing_from_its_folder(folder):
    (folder / NAMED_TRACES["mooncake"]).unlink()
    with pytest.raises(FileNotFoundError, match="missing from the traces folder"):
        trace_path("mooncake", folder)


def test_any_path_is_accepted_and_its_suffix_picks_the_format(folder, tmp_path):
    copy = tmp_path / "mine.jsonl"
    copy.write_text((folder / NAMED_TRACES["mooncake"]).read_text())
    assert load_trace(copy).requests[0].hash_ids == (0,)
    assert load_trace(str(folder / NAMED_TRACES["azure_code"])).requests[0].input_tokens == 5
    odd = tmp_path / "trace.txt"
    odd.write_text("x")
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(odd)
    with pytest.raises(FileNotFoundError, match="neither a file nor one of the named traces"):
        load_trace(tmp_path / "absent.csv")
