"""``pdlink bench cloud``: open-loop Poisson load on a real cloud server, leading tokens k vs cloud-only.

Prompt and answer lengths come from a real trace (:mod:`pdlink.traces`: ``--traces-dir``, else
``$PDLINK_TRACES_DIR``, else ``../shared/traces``), sampled, scaled and capped so this small machine can serve
them; the prompt text from Python's own reference docs, with the trace's shared prefixes (Mooncake hash ids) kept.
The same arrivals are replayed once per setting: the cloud generating k in {1, 8, 32} leading tokens (P/D-Device)
and the cloud generating the whole answer (the cloud-only baseline). Reported per setting: TTFT p50/p99,
rejection rate, and cloud busy seconds per request, whose inverse is the cloud's throughput.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pdlink.traces import MOONCAKE_BLOCK_TOKENS, NAMED_TRACES, PromptSynthesizer, TraceRequest, load_trace
from pdlink.common.models import DEFAULT_MODEL

INSTRUCTION = "Summarize the following text in a few sentences.\n\n"
_CONTENT = "\x00CONTENT\x00"  # stands in for the user message when the chat template is split around it


@dataclass(frozen=True)
class CloudBenchConfig:
    """Workload and server settings of the cloud benchmark (``full`` = the cloud-only baseline)."""

    trace: str = "mooncake"
    num_requests: int = 12
    ks: tuple[int, ...] = (1, 8, 32)
    prompt_scale: float = 0.1  # trace prompt lengths (and Mooncake's 512-token blocks) are multiplied by this
    max_prompt_tokens: int = 1024
    output_scale: float = 0.5
    max_output_tokens: int = 128
    utilization: float = 0.6  # arrival rate as a share of the measured prefill-only capacity
    rate_rps: float | None = None  # fixed arrival rate instead
    threads: int = 2
    ttft_budget_s: float = 15.0
    seed: int = 0
    model: str = DEFAULT_MODEL
    traces_dir: str | None = None  # else $PDLINK_TRACES_DIR, else ../shared/traces

    def __post_init__(self):
        if self.trace not in NAMED_TRACES and not Path(self.trace).suffix:
            raise ValueError(f"trace must be one of {sorted(NAMED_TRACES)} or a .csv/.jsonl trace file")
        if self.num_requests < 2 or not self.ks or min(self.ks) < 1:
            raise ValueError("num_requests must be >= 2 and every k >= 1")
        if not 0 < self.utilization or (self.rate_rps is not None and not self.rate_rps > 0):
            raise ValueError("utilization and rate_rps must be > 0")
        if not 0 < self.prompt_scale or not 0 < self.output_scale:
            raise ValueError("prompt_scale and output_scale must be > 0")


def trace_requests(cfg: CloudBenchConfig) -> list[TraceRequest]:
    """``num_requests`` requests sampled (seeded, in arrival order) from the trace, lengths scaled and capped.
    Raises FileNotFoundError (naming --traces-dir and $PDLINK_TRACES_DIR) when the trace is absent."""
    sample = load_trace(cfg.trace, cfg.traces_dir).sample(cfg.num_requests, seed=cfg.seed)
    return [replace(r, input_tokens=int(min(cfg.max_prompt_tokens, max(16, r.input_tokens * cfg.prompt_scale))),
                    output_tokens=int(min(cfg.max_output_tokens, max(1, r.output_tokens * cfg.output_scale))))
            for r in sample]


def build_prompts(tokenizer, requests: list[TraceRequest], cfg: CloudBenchConfig) -> list[list[int]]:
    """Chat prompts of exactly each request's ``input_tokens`` (at least the template's own): the chat template
    around an instruction and real text, cut at token level so shared trace prefixes stay shared token for token."""
    head_text, tail_text = tokenizer.apply_chat_template([{"role": "user", "content": _CONTENT}]).split(_CONTENT)
    head, tail = tokenizer.encode(head_text + INSTRUCTION), tokenizer.encode(tail_text)
    block = max(1, round(MOONCAKE_BLOCK_TOKENS * cfg.prompt_scale))
    bodies = PromptSynthesizer(tokenizer, seed=cfg.seed, block_tokens=block).prompts(
        replace(r, input_tokens=max(1, r.input_tokens - len(head) - len(tail))) for r in requests)
    return [head + body + tail for body in bodies]


async def _one(url, token_hash, ids, k, at, t0, out):
    from pdlink.common.client import CloudClient
    from pdlink.common.protocol import Accepted, Rejected, Token

    await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
    record = {"prompt_tokens": len(ids), "k": k, "arrival_s": at}
    submit = time.perf_counter()
    try:
        async with await CloudClient.connect(url, tokenizer_hash=token_hash, event_timeout_s=300) as client:
            stream = await client.prefill(prompt_token_ids=ids, max_leading_tokens=k)
            async for event in stream:
                if isinstance(event, Accepted):
                    record["estimated_ttft_s"] = event.estimated_ttft_s
                elif isinstance(event, Token) and event.index == 0:
                    record["ttft_s"] = time.perf_counter() - submit
                elif isinstance(event, Rejected):
                    record["rejected"] = event.reason
        record.update(tokens=len(stream.tokens), e2e_s=time.perf_counter() - submit)
        if stream.done:
            record["cloud_busy_s"] = stream.done.cloud_busy_s
    except Exception as exc:  # a failed request is a result too
        record["error"] = f"{type(exc).__name__}: {exc}"
    out.append(record)


def _pct(values, q):
    return float(np.percentile(values, q)) if values else None


async def _phase(server, token_hash, prompts, ks, arrivals) -> dict:
    before = server.health()["busy_s"]
    records, t0 = [], time.perf_counter() + 0.2
    await asyncio.gather(*(_one(server.url, token_hash, ids, k, at, t0, records)
                           for ids, k, at in zip(prompts, ks, arrivals)))
    for _ in range(600):  # until the server is idle again, so its busy total is complete
        health = server.health()
        if health["requests_in_flight"] == 0:
            break
        await asyncio.sleep(0.1)
    done = [r for r in records if "cloud_busy_s" in r]
    ttft = [r["ttft_s"] for r in records if "ttft_s" in r]
    busy_total = health["busy_s"] - before
    return {"requests": len(records), "completed": len(done),
            "rejected": sum("rejected" in r for r in records), "errors": sum("error" in r for r in records),
            "rejection_rate": sum("rejected" in r for r in records) / len(records),
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "cloud_busy_s_per_request": float(np.mean([r["cloud_busy_s"] for r in done])) if done else None,
            "server_busy_s": busy_total, "server_busy_s_per_completed": busy_total / len(done) if done else None,
            "tokens_per_request": float(np.mean([r["tokens"] for r in done])) if done else None,
            "wall_s": time.perf_counter() - t0, "records": sorted(records, key=lambda r: r["arrival_s"])}


def run_cloud_bench(output_dir: str | Path, cfg: CloudBenchConfig | None = None) -> dict:
    """Run the benchmark against a fresh server subprocess; write ``cloud.json`` and ``cloud.png`` into
    ``output_dir`` and return the report. Raises FileNotFoundError when the traces are absent and
    TraceFormatError (file:line) on a malformed trace."""
    from pdlink.bench.engine import machine_info
    from pdlink.cloud.server_process import ServerProcess
    from pdlink.cloud.torch_backend import checkpoint_tokenizer
    from pdlink.compile.checkpoint import open_checkpoint

    cfg = cfg or CloudBenchConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    requests = trace_requests(cfg)
    tokenizer = checkpoint_tokenizer(open_checkpoint(cfg.model))
    prompts = build_prompts(tokenizer, requests, cfg)
    answers = [r.output_tokens for r in requests]
    settings = [(f"k={k}", [min(k, a) for a in answers]) for k in cfg.ks] + [("full", answers)]
    serve = ["--model", cfg.model, "--threads", str(cfg.threads), "--max-prompt-tokens", str(cfg.max_prompt_tokens + 64),
             "--max-leading-tokens", str(max(cfg.max_output_tokens, *cfg.ks)), "--max-concurrent-requests", "256",
             "--ttft-budget-s", str(cfg.ttft_budget_s), "--max-batch-sequences", "32", "--log-level", "WARNING"]
    with ServerProcess(*serve, log_path=out / "cloud_server.log") as server:
        server.wait_ready()
        token_hash = server.health()["tokenizer_hash"]
        rate = cfg.rate_rps or _calibrate(server, token_hash, prompts, cfg.utilization)
        gaps = np.random.default_rng(cfg.seed + 1).exponential(1.0 / rate, len(prompts))
        arrivals = list(np.cumsum(gaps) - gaps[0])
        phases = {}
        for name, ks in settings:
            phases[name] = asyncio.run(_phase(server, token_hash, prompts, ks, arrivals))
            p = phases[name]
            print(f"cloud bench {name}: TTFT p50 {p['ttft_p50_s']} s, rejected {p['rejected']}/{p['requests']}, "
                  f"busy/request {p['cloud_busy_s_per_request']} s", file=sys.stderr, flush=True)
    full = phases["full"]["cloud_busy_s_per_request"]
    summary = {name: {k: p[k] for k in ("ttft_p50_s", "ttft_p99_s", "rejection_rate", "cloud_busy_s_per_request",
                                        "tokens_per_request")} for name, p in phases.items()}
    for name, s in summary.items():
        busy = s["cloud_busy_s_per_request"]
        s["cloud_throughput_gain_vs_full"] = full / busy if busy and full else None
    report = {"config": asdict(cfg), "machine": machine_info(cfg.threads), "arrival_rate_rps": rate,
              "prompt_tokens": {"mean": float(np.mean([len(p) for p in prompts])),
                                "max": max(len(p) for p in prompts)},
              "answer_tokens_mean": float(np.mean(answers)), "summary": summary, "phases": phases,
              "notes": "Server and load generator share this machine; compare settings within one run only. "
                       "cloud_busy_s_per_request is the server's own per-request share of backend compute."}
    (out / "cloud.json").write_text(json.dumps(report, indent=2))
    plot_cloud_bench(report, out / "cloud.png")
    return report


def _calibrate(server, token_hash, prompts, utilization) -> float:
    """Arrival rate = ``utilization`` / mean prefill-only service time, measured with two sequential requests."""
    sample = sorted(prompts, key=len)[len(prompts) // 2]

    async def measure():
        times = []
        for _ in range(2):
            record = []
            await _one(server.url, token_hash, sample, 1, 0.0, time.perf_counter(), record)
            times.append(record[0]["e2e_s"])
        return min(times)

    return utilization / asyncio.run(measure())


def plot_cloud_bench(report: dict, path: Path) -> None:
    """TTFT p50/p99, cloud busy seconds per request, and rejection rate per setting."""
    from pdlink.bench.plots import _pyplot

    plt = _pyplot()
    names = list(report["summary"])
    s = report["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    x = np.arange(len(names))
    axes[0].bar(x - 0.2, [s[n]["ttft_p50_s"] or 0 for n in names], 0.4, label="p50")
    axes[0].bar(x + 0.2, [s[n]["ttft_p99_s"] or 0 for n in names], 0.4, label="p99")
    axes[0].set(title="TTFT under open-loop Poisson load", ylabel="seconds", xticks=x, xticklabels=names)
    axes[0].legend()
    axes[1].bar(names, [s[n]["cloud_busy_s_per_request"] or 0 for n in names], color="tab:orange")
    for i, n in enumerate(names):
        gain = s[n]["cloud_throughput_gain_vs_full"]
        if gain:
            axes[1].text(i, (s[n]["cloud_busy_s_per_request"] or 0), f"{gain:.1f}x", ha="center", va="bottom")
    axes[1].set(title="cloud busy seconds per request (gain vs full)", ylabel="seconds")
    axes[2].bar(names, [s[n]["rejection_rate"] for n in names], color="tab:red")
    axes[2].set(title="rejection rate", ylim=(0, 1))
    fig.suptitle(f"cloud prefill service, {report['config']['trace']} trace, "
                 f"{report['arrival_rate_rps']:.2f} req/s, {report['machine'].get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
