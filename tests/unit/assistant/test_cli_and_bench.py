"""``pdlink serve`` flags over a config file, and the assistant benchmark's figures and plot (no model)."""

from __future__ import annotations

from pdlink.assistant.config import build_config
from pdlink.bench.assistant import AssistantBenchConfig, _stats, _summary, plot_assistant_bench
from pdlink.bench.assistant_client import TurnRecord
from pdlink.cli import build_parser
from pdlink.cli.serve import FLAGS


def test_serve_flags_override_the_config_file_and_unset_flags_keep_it(tmp_path):
    cfg_file = tmp_path / "a.toml"
    cfg_file.write_text('package = "pkg"\nport = 8100\nmax_concurrency = 3\n')
    args = build_parser("serve").parse_args(["serve", "--config", str(cfg_file), "--port", "8200",
                                             "--cloud", "ws://127.0.0.1:9"])
    cfg = build_config(args.config, **{n: getattr(args, n) for n in FLAGS})
    assert (cfg.port, cfg.max_concurrency, cfg.cloud, cfg.default_mode) == (8200, 3, "ws://127.0.0.1:9", "pd")


def _turn(client, turn, ttft, gaps, origins, cached=0):
    rec = TurnRecord(client, turn, ttft_s=ttft, gaps_s=gaps)
    rec.x_pdlink = {"origins": origins, "cloud_tokens": origins.count("cloud"), "cached_prompt_tokens": cached,
                    "fallback": None}
    return rec


def _run(profile, mode, reuse, ttft1, ttft2):
    turns = [_turn(0, 0, ttft1, [0.05, 0.06], ["cloud", "device", "device"]), _turn(0, 1, ttft2, [0.05], ["device"] * 2)]
    return {"profile": profile, "mode": mode, "prefix_reuse": reuse, "turn1": _stats(turns[:1]),
            "turn2": _stats(turns[1:]), "all": _stats(turns), "turns": [t.to_json() for t in turns]}


def test_bench_summary_ratios_and_plot(tmp_path):
    runs = [_run("phone", "pd", True, 1.0, 0.5), _run("phone", "device", True, 4.0, 0.5),
            _run("phone", "device", False, 4.0, 2.0)]
    assert runs[0]["turn1"]["cloud_token_share"] == 1 / 3 and runs[0]["all"]["gap_max_s"] == 0.06
    summary = _summary(runs)
    assert summary == {"phone_ttft_p50_pd_over_device": 0.25, "phone_ttft_p99_pd_over_device": 0.25,
                       "phone_turn2_ttft_p50_reuse_over_no_reuse": 0.25}
    plot_assistant_bench({"runs": runs, "config": {"clients": 1}}, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0
    assert AssistantBenchConfig(output=str(tmp_path)).clients == 8
