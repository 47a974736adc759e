"""``pdlink bench serve``: the disaggregated cloud (P/D-Serve) on this machine.

Two parts, one ``serve.json`` (+ ``serve.png``):

* **Routing**: a real small cluster (``pdlink cloud serve --cluster ...``: gateway, prefill and decode instances
  as Ray actors, SmolLM2 on torch) under a Mooncake-trace load (prompt lengths and shared prefixes from the
  trace, scaled to this machine; Poisson arrivals, seeded), once with on-demand forwarding and once with the
  queue-report baseline, the same arrivals each time. Reported: throughput (completed requests per second of
  the run), TTFT p50/p99 and TTFT-SLO attainment (first token within ``ttft_slo_s``; a rejected request
  misses it: its device falls back to local prefill).
* **KV transfer**: contiguous vs block layouts for 128-4096-token sequences of SmolLM2's KV through
  ``cloud/kv``'s transports (``bench/kv_transfer.py``; ``kv_transfer.json`` is written beside).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdlink.bench.cloud import CloudBenchConfig, build_prompts, trace_requests
from pdlink.common.models import DEFAULT_MODEL

ROUTERS = ("on_demand", "queue_report")


@dataclass(frozen=True)
class ServeBenchConfig:
    """Sizes of ``pdlink bench serve`` (kept small: the whole cluster shares this machine's cores)."""

    trace: str = "mooncake"
    num_requests: int = 24
    prompt_scale: float = 0.05  # Mooncake prompts (and their 512-token prefix blocks) times this
    max_prompt_tokens: int = 384
    leading_tokens: int = 4  # k: the cloud's leading tokens per request (P/D-Device asks for few)
    rate_rps: float = 3.0  # Poisson arrival rate
    ttft_slo_s: float = 2.0
    prefill: int = 2
    decode: int = 1
    prefill_slots: int = 2
    cluster: str = "local"  # local (a Ray runtime here), ray://HOST:PORT, or inproc
    instance_threads: int = 1
    kv_lengths: tuple[int, ...] = (128, 512, 1024, 2048, 4096)
    kv_transports: tuple[str, ...] = ("shm", "tcp")  # add mooncake where its engine is installed
    seed: int = 0
    model: str = DEFAULT_MODEL
    traces_dir: str | None = None

    def __post_init__(self):
        if self.num_requests < 2 or self.leading_tokens < 1:
            raise ValueError("--num-requests must be >= 2 and --leading-tokens >= 1")
        if not self.rate_rps > 0 or not self.ttft_slo_s > 0 or not self.prompt_scale > 0:
            raise ValueError("--rate-rps, --ttft-slo-s and --prompt-scale must be > 0")
        if self.prefill < 1 or self.decode < 1 or self.prefill_slots < 1:
            raise ValueError("--prefill, --decode and --prefill-slots must be >= 1")
        if not self.kv_lengths or min(self.kv_lengths) < 1:
            raise ValueError("--kv-lengths must be >= 1 tokens each")
        if not self.kv_transports or set(self.kv_transports) - {"shm", "tcp", "mooncake"}:
            raise ValueError("--kv-transports takes shm, tcp and/or mooncake")

    def workload(self) -> CloudBenchConfig:
        return CloudBenchConfig(trace=self.trace, num_requests=self.num_requests, prompt_scale=self.prompt_scale,
                                max_prompt_tokens=self.max_prompt_tokens, seed=self.seed, model=self.model,
                                traces_dir=self.traces_dir)


async def _one(url: str, token_hash: str, ids: list[int], k: int, at: float, t0: float) -> dict:
    from pdlink.common.client import CloudClient
    from pdlink.common.protocol import Rejected, Token

    await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
    record, submit = {"prompt_tokens": len(ids), "arrival_s": at}, time.perf_counter()
    try:
        async with await CloudClient.connect(url, tokenizer_hash=token_hash, event_timeout_s=300) as client:
            stream = await client.prefill(prompt_token_ids=ids, max_leading_tokens=k)
            async for event in stream:
                if isinstance(event, Token) and event.index == 0:
                    record["ttft_s"] = time.perf_counter() - submit
                elif isinstance(event, Rejected):
                    record["rejected"] = event.reason
        record.update(tokens=len(stream.tokens), e2e_s=time.perf_counter() - submit,
                      done=stream.done.reason if stream.done else None)
    except Exception as exc:  # a failed request is a result too
        record["error"] = f"{type(exc).__name__}: {exc}"
    return record


def summarize(records: list[dict], wall_s: float, slo_s: float) -> dict:
    """Throughput, TTFT percentiles and SLO attainment of one phase (pure; rejected = SLO missed)."""
    ttft = [r["ttft_s"] for r in records if "ttft_s" in r]
    completed = [r for r in records if r.get("done")]
    pct = (lambda q: float(np.percentile(ttft, q)) if ttft else None)
    return {"requests": len(records), "completed": len(completed),
            "rejected": sum("rejected" in r for r in records), "errors": sum("error" in r for r in records),
            "throughput_rps": len(completed) / wall_s if wall_s > 0 else None,
            "ttft_p50_s": pct(50), "ttft_p99_s": pct(99),
            "slo_attainment": sum(t <= slo_s for t in ttft) / len(records) if records else None, "wall_s": wall_s}


def _serve_args(cfg: ServeBenchConfig, router: str) -> list[str]:
    return ["--cluster", cfg.cluster, "--router", router, "--model", cfg.model, "--prefill", str(cfg.prefill),
            "--decode", str(cfg.decode), "--prefill-slots", str(cfg.prefill_slots),
            "--instance-threads", str(cfg.instance_threads), "--instance-cpus", "0.25",
            "--max-prompt-tokens", str(cfg.max_prompt_tokens + 64), "--max-leading-tokens", str(cfg.leading_tokens),
            "--max-concurrent-requests", "256", "--ttft-budget-s", str(cfg.ttft_slo_s), "--log-level", "WARNING"]


def run_routing_phase(cfg: ServeBenchConfig, router: str, prompts: list[list[int]], arrivals: list[float],
                      log_path: Path) -> dict:
    """One cluster with ``router``, the whole load once; the phase's summary with its records."""
    from pdlink.cloud.server_process import ServerProcess

    with ServerProcess(*_serve_args(cfg, router), log_path=log_path) as server:
        server.wait_ready(timeout_s=900)
        token_hash = server.health()["tokenizer_hash"]

        async def load():
            t0 = time.perf_counter() + 0.2
            records = await asyncio.gather(*(_one(server.url, token_hash, ids, cfg.leading_tokens, at, t0)
                                             for ids, at in zip(prompts, arrivals)))
            return list(records), time.perf_counter() - t0

        records, wall = asyncio.run(load())
        metrics = server.http("/metrics")[1]
    phase = summarize(records, wall, cfg.ttft_slo_s)
    phase["offers"] = {o: _metric_sum(metrics, "pdlink_cluster_offers_total", f'outcome="{o}"')
                       for o in ("accepted", "busy", "dead")}
    phase["records"] = sorted(records, key=lambda r: r["arrival_s"])
    return phase


def _metric_sum(text: str, name: str, label: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and label in line)


def kv_transfer_section(cfg: ServeBenchConfig, out: Path) -> dict:
    """Contiguous vs block transfer time per length from ``cloud/kv``'s benchmark (``bench/kv_transfer.py``:
    receiver in another process, medians of 3), which also writes ``kv_transfer.json``/``.png`` beside."""
    from pdlink.bench.kv_transfer import KVBenchConfig, run_kv_transfer_bench

    return run_kv_transfer_bench(out, KVBenchConfig(lengths=cfg.kv_lengths, transports=cfg.kv_transports))


def run_serve_bench(output_dir: str | Path, cfg: ServeBenchConfig | None = None) -> dict:
    """Both parts; writes ``serve.json`` and ``serve.png`` into ``output_dir`` and returns the report."""
    from pdlink.bench.engine import machine_info
    from pdlink.cloud.torch_backend import checkpoint_tokenizer
    from pdlink.compile.checkpoint import open_checkpoint

    cfg = cfg or ServeBenchConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    requests = trace_requests(cfg.workload())
    prompts = build_prompts(checkpoint_tokenizer(open_checkpoint(cfg.model)), requests, cfg.workload())
    gaps = np.random.default_rng(cfg.seed + 1).exponential(1.0 / cfg.rate_rps, len(prompts))
    arrivals = [float(a) for a in np.cumsum(gaps) - gaps[0]]
    report = {"config": asdict(cfg), "machine": machine_info(cfg.instance_threads),
              "prompt_tokens": {"mean": float(np.mean([len(p) for p in prompts])), "max": max(map(len, prompts))},
              "kv_transfer": kv_transfer_section(cfg, out), "routing": {}}
    for router in ROUTERS:
        phase = run_routing_phase(cfg, router, prompts, arrivals, out / f"serve_{router}.log")
        report["routing"][router] = phase
        print(f"serve bench {router}: {phase['throughput_rps']:.3f} req/s, SLO {phase['slo_attainment']:.2f}, "
              f"TTFT p50 {phase['ttft_p50_s']}, rejected {phase['rejected']}", file=sys.stderr, flush=True)
    on, base = report["routing"]["on_demand"], report["routing"]["queue_report"]
    report["summary"] = {
        "throughput_on_demand_vs_queue_report": _ratio(on["throughput_rps"], base["throughput_rps"]),
        "slo_attainment_on_demand_minus_queue_report": _diff(on["slo_attainment"], base["slo_attainment"]),
        "kv_contiguous_vs_block_mean_change_pct": {t: v["mean_change_pct"]
                                                   for t, v in report["kv_transfer"]["summary"].items()},
    }
    report["notes"] = ("Every instance, the gateway and the load generator share this machine; compare the two "
                       "routers within one run only. SLO attainment counts a rejected request as a miss.")
    (out / "serve.json").write_text(json.dumps(report, indent=2))
    plot_serve_bench(report, out / "serve.png")
    return report


def _ratio(a, b):
    return a / b if a is not None and b else None


def _diff(a, b):
    return a - b if a is not None and b is not None else None


def plot_serve_bench(report: dict, path: Path) -> None:
    """Throughput and SLO attainment per router; KV transfer time per length and layout."""
    from pdlink.bench.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    routing = report["routing"]
    names = list(routing)
    axes[0].bar(names, [routing[n]["throughput_rps"] or 0 for n in names])
    axes[0].set(title="throughput (completed req/s)", ylabel="req/s")
    axes[1].bar(names, [routing[n]["slo_attainment"] or 0 for n in names], color="tab:green")
    axes[1].set(title=f"TTFT SLO attainment (<= {report['config']['ttft_slo_s']:g} s)", ylim=(0, 1))
    for transport in report["config"]["kv_transports"]:
        for layout in ("contiguous", "block"):
            rows = sorted((r for r in report["kv_transfer"]["results"]
                           if r["transport"] == transport and r["layout"] == layout), key=lambda r: r["tokens"])
            axes[2].plot([r["tokens"] for r in rows], [r["seconds_median"] * 1e3 for r in rows], "o-",
                         label=f"{transport} {layout}")
    axes[2].set(title="KV transfer time (median of 3)", xlabel="sequence tokens", ylabel="ms", xscale="log",
                yscale="log")
    axes[2].legend()
    fig.suptitle(f"P/D-Serve on one machine: {report['config']['trace']} load, "
                 f"{report['config']['prefill']}P+{report['config']['decode']}D, {report['machine'].get('cpu', '')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
