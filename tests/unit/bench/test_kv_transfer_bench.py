import json

import pytest

from pdlink.bench.kv_transfer import KVBenchConfig, run_kv_transfer_bench
from pdlink.cli import main


def test_small_run_writes_json_plot_and_the_contiguous_vs_block_summary(tmp_path):
    cfg = KVBenchConfig(lengths=(8, 40), transports=("tcp", "shm"), repeats=1, page_size=8, num_layers=2,
                        num_kv_heads=1, head_dim=4, timeout_s=30)
    report = run_kv_transfer_bench(tmp_path, cfg)
    assert json.loads((tmp_path / "kv_transfer.json").read_text())["summary"] == report["summary"]
    assert (tmp_path / "kv_transfer.png").stat().st_size > 0
    rows = {(r["transport"], r["layout"], r["tokens"]): r for r in report["results"]}
    assert len(rows) == 8
    assert rows[("tcp", "contiguous", 40)]["messages"] == 1
    assert rows[("tcp", "block", 40)]["messages"] == 2 * 5  # layers x pages, each confirmed
    assert rows[("shm", "block", 40)]["bytes"] == 2 * 2 * 40 * 1 * 4 * 4
    assert set(report["summary"]) == {"tcp", "shm"} and "mean_change_pct" in report["summary"]["tcp"]


@pytest.mark.parametrize("fields,message", [({"lengths": ()}, "lengths"), ({"transports": ("pigeon",)}, "transports"),
                                            ({"repeats": 0}, "repeats"), ({"timeout_s": 0}, "timeout")])
def test_bad_config_says_what_to_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        KVBenchConfig(**fields)


def test_cli_takes_several_lengths_and_transports(tmp_path, capsys):
    assert main(["bench", "kv", "--output", str(tmp_path), "--lengths", "4", "8", "--repeats", "1",
                 "--page-size", "4", "--transports", "tcp"]) == 0
    report = json.loads((tmp_path / "kv_transfer.json").read_text())
    assert report["config"]["lengths"] == [4, 8] and report["config"]["transports"] == ["tcp"]
    assert "kv_transfer.json" in capsys.readouterr().out
