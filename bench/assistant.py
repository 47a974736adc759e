"""``pdlink bench assistant``: the desktop assistant under 8 concurrent chat clients.

One cloud server on loopback (the device's own package, its own thread budget) and one ``pdlink serve`` per
run: a device profile (phone-class, laptop-class; emulated, ``edge/device_profile.py``) x a mode (pd, device),
with the conversations' KV kept between turns; then the same device-mode runs with no KV kept, so the second
turn prefills its whole history again. Every client holds a two-turn conversation on its own real-text prompt.
``assistant.json`` holds every turn and the percentiles (client-side TTFT and shown-token gaps, by turn);
``assistant.png`` plots them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdlink.bench.assistant_client import conversation
from pdlink.common.real_text import real_text

FOLLOW_UP = "Now give three keywords for it."


@dataclass(frozen=True)
class AssistantBenchConfig:
    """Settings of one ``pdlink bench assistant`` run (defaults sized for a few minutes on 2 cores)."""

    output: str
    clients: int = 8
    profiles: tuple[str, ...] = ("phone", "laptop")
    modes: tuple[str, ...] = ("pd", "device")
    prompt_chars: int = 900  # each client's first prompt: about 200 tokens of real text
    max_tokens: int = 12
    net_rtt_ms: float = 40.0
    cloud_threads: int = 1
    device_threads: int = 1
    package: str | None = None  # default: the q4_1 package of the default model, built on demand

    def __post_init__(self):
        if self.clients < 1 or self.max_tokens < 2 or self.prompt_chars < 50:
            raise ValueError("clients must be >= 1, max_tokens >= 2 and prompt_chars >= 50")
        if not set(self.modes) <= {"pd", "device"} or not self.modes or not self.profiles:
            raise ValueError("--modes takes pd and/or device; --profiles at least one device profile")


def run_assistant_bench(cfg: AssistantBenchConfig) -> dict:
    """Run every (profile, mode, reuse) case; writes ``assistant.json`` and ``assistant.png``; returns the report."""
    from pdlink.bench.engine import _ensure_package, machine_info
    from pdlink.cloud.server_process import ServerProcess

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    package = Path(cfg.package) if cfg.package else _ensure_package("q4_1", Path(".cache/bench-packages"))
    cases = [(p, m, True) for p in cfg.profiles for m in cfg.modes] + [(p, "device", False) for p in cfg.profiles]
    runs = []
    with ServerProcess("--model", str(package), "--threads", str(cfg.cloud_threads), "--max-leading-tokens", "256",
                       "--ttft-budget-s", "600", log_path=out / "assistant-cloud.log") as cloud:
        url = cloud.wait_ready(timeout_s=300)
        for profile, mode, reuse in cases:
            runs.append(_run_case(cfg, package, url, profile, mode, reuse, out))
            r = runs[-1]
            print(f"  {profile:7s} {mode:6s} reuse={reuse!s:5s} ttft p50 {r['turn1']['ttft_p50_s']:.2f} s / turn 2 "
                  f"{r['turn2']['ttft_p50_s']:.2f} s, gap p99 {r['all']['gap_p99_s'] * 1000:.0f} ms, "
                  f"errors {r['errors']}", flush=True)
    report = {"config": asdict(cfg), "machine": machine_info(cfg.device_threads + cfg.cloud_threads), "runs": runs,
              "summary": _summary(runs), "note": "emulated devices (real engine work, then a wait to the profile's "
              "time); one cloud server and one assistant on this machine, each with its own thread budget"}
    (out / "assistant.json").write_text(json.dumps(report, indent=1))
    plot_assistant_bench(report, out / "assistant.png")
    return report


def _run_case(cfg, package: Path, cloud_url: str, profile: str, mode: str, reuse: bool, out: Path) -> dict:
    from pdlink.assistant.server_process import AssistantProcess

    log = out / f"assistant-{profile}-{mode}-{'reuse' if reuse else 'noreuse'}.log"
    args = ["--package", str(package), "--cloud", cloud_url, "--mode", mode, "--device-profile", profile,
            "--max-concurrency", str(cfg.clients), "--kept-conversations", str(cfg.clients if reuse else 0),
            "--threads", str(cfg.device_threads), "--net-rtt-ms", str(cfg.net_rtt_ms), "--context-window", "2048"]
    with AssistantProcess(*args, log_path=log) as server:
        server.wait_ready(timeout_s=300)
        model = json.loads(server.http("/v1/models")[1])["data"][0]["id"]
        _warm_up(server.url, model)
        text = real_text(cfg.prompt_chars * (cfg.clients + 1))
        results: dict[int, list] = {}

        def client(i: int):
            prompt = "Summarize this text in one sentence.\n\n" + text[i * cfg.prompt_chars:(i + 1) * cfg.prompt_chars]
            results[i] = conversation(server.url, model, i, prompt, [FOLLOW_UP], cfg.max_tokens, mode)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(cfg.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(1200)
        wall = time.perf_counter() - t0
        batches = {k: server.metric("pdlink_assistant_decode_batches_total", size=str(k))
                   for k in range(1, cfg.clients + 1)}
    turns = [rec for recs in results.values() for rec in recs]
    return {"profile": profile, "mode": mode, "prefix_reuse": reuse, "wall_s": wall,
            "errors": sum(r.error is not None for r in turns), "turns": [r.to_json() for r in turns],
            "turn1": _stats([r for r in turns if r.turn == 0]), "turn2": _stats([r for r in turns if r.turn == 1]),
            "all": _stats(turns), "decode_batch_sizes": {k: v for k, v in batches.items() if v}}


def _warm_up(url: str, model: str) -> None:
    """One short request, so that the first client does not pay for the engine's first call."""
    conversation(url, model, -1, "Hi", [], 2, "device")


def _stats(turns) -> dict:
    ok = [t for t in turns if t.ttft_s is not None]
    ttft = np.array([t.ttft_s for t in ok]) if ok else np.zeros(1)
    gaps = np.array([g for t in ok for g in t.gaps_s]) if any(t.gaps_s for t in ok) else np.zeros(1)
    cloud = sum((t.x_pdlink or {}).get("cloud_tokens", 0) for t in ok)
    shown = sum(len((t.x_pdlink or {}).get("origins") or []) for t in ok)
    return {"n": len(ok), "ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p90_s": float(np.percentile(ttft, 90)),
            "ttft_p99_s": float(np.percentile(ttft, 99)), "gap_p50_s": float(np.percentile(gaps, 50)),
            "gap_p99_s": float(np.percentile(gaps, 99)), "gap_max_s": float(gaps.max()),
            "cloud_token_share": cloud / shown if shown else 0.0,
            "reused_prompt_tokens_mean": float(np.mean([(t.x_pdlink or {}).get("cached_prompt_tokens", 0) for t in ok]))
            if ok else 0.0,
            "fallbacks": sum(bool((t.x_pdlink or {}).get("fallback")) for t in ok)}


def _summary(runs: list[dict]) -> dict:
    """Ratios within this run: pd vs device TTFT per profile, second-turn TTFT with vs without prefix reuse."""
    by = {(r["profile"], r["mode"], r["prefix_reuse"]): r for r in runs}
    out = {}
    for profile in sorted({r["profile"] for r in runs}):
        dev, pd, cold = by.get((profile, "device", True)), by.get((profile, "pd", True)), by.get((profile, "device", False))
        if dev and pd:
            out[f"{profile}_ttft_p50_pd_over_device"] = pd["turn1"]["ttft_p50_s"] / dev["turn1"]["ttft_p50_s"]
            out[f"{profile}_ttft_p99_pd_over_device"] = pd["turn1"]["ttft_p99_s"] / dev["turn1"]["ttft_p99_s"]
        if dev and cold:
            out[f"{profile}_turn2_ttft_p50_reuse_over_no_reuse"] = dev["turn2"]["ttft_p50_s"] / cold["turn2"]["ttft_p50_s"]
    return out


def plot_assistant_bench(report: dict, path: Path) -> None:
    """TTFT percentiles per case and turn, and shown-gap p99 per case."""
    from pdlink.bench.plots import _pyplot

    plt = _pyplot()
    runs = report["runs"]
    labels = [f"{r['profile']}\n{r['mode']}" + ("" if r["prefix_reuse"] else "\nno reuse") for r in runs]
    x = np.arange(len(runs))
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    for off, (turn, pct) in zip((-0.3, -0.1, 0.1, 0.3), [("turn1", "p50"), ("turn1", "p99"), ("turn2", "p50"),
                                                            ("turn2", "p99")]):
        a.bar(x + off, [r[turn][f"ttft_{pct}_s"] for r in runs], 0.2, label=f"{turn.replace('turn', 'turn ')} {pct}")
    a.set_xticks(x, labels, fontsize=8)
    a.set_ylabel("TTFT at the client (s)")
    a.set_title(f"{report['config']['clients']} concurrent chat clients")
    a.legend(fontsize=8)
    b.bar(x - 0.2, [r["all"]["gap_p99_s"] * 1000 for r in runs], 0.4, label="p99")
    b.bar(x + 0.2, [r["all"]["gap_max_s"] * 1000 for r in runs], 0.4, label="max")
    b.set_xticks(x, labels, fontsize=8)
    b.set_ylabel("gap between shown tokens (ms)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
