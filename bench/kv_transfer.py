"""KV transfer time, contiguous (one buffer, one metadata exchange) vs block (one confirmed message per page
and layer), for the real model's KV shape, on every transport; the receiver runs in another process.

``run_kv_transfer_bench(output, cfg)`` writes ``kv_transfer.json`` and ``kv_transfer.png`` and returns the
report. A transfer's time runs from ``send`` to the sender seeing ``done`` (the receiver has checked the
checksum), so it holds the offer, the payload and the confirmations.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdlink.bench.engine import machine_info

# SmolLM2-135M: 30 layers, 3 kv heads of 64 features, float32 KV (the cloud's torch backend; the compiled
# package's pages are float16, half these bytes).
SMOLLM2_KV = (30, 3, 64)


@dataclass(frozen=True)
class KVBenchConfig:
    """Sequence lengths, transports and repeats of ``pdlink bench kv``."""

    lengths: tuple[int, ...] = (128, 512, 1024, 2048, 4096)
    transports: tuple[str, ...] = ("shm", "tcp", "mooncake")
    repeats: int = 3
    page_size: int = 16
    num_layers: int = SMOLLM2_KV[0]
    num_kv_heads: int = SMOLLM2_KV[1]
    head_dim: int = SMOLLM2_KV[2]
    timeout_s: float = 120.0

    def __post_init__(self):
        from pdlink.cloud.kv.transfer import TRANSPORTS

        if not self.lengths or min(self.lengths) < 1:
            raise ValueError("lengths must be one or more positive token counts, e.g. --lengths 128 512")
        bad = [t for t in self.transports if t not in TRANSPORTS]
        if bad or not self.transports:
            raise ValueError(f"transports must be some of {', '.join(TRANSPORTS)}, got {list(self.transports)}")
        if self.repeats < 1 or self.page_size < 1 or min(self.num_layers, self.num_kv_heads, self.head_dim) < 1:
            raise ValueError("repeats, page_size, num_layers, num_kv_heads and head_dim must be >= 1")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")


def _receive_loop(transport: str, ids: list[str], timeout: float, queue) -> None:
    from pdlink.cloud.kv import open_receiver

    with open_receiver(transport) as receiver:
        queue.put(receiver.address)
        for tid in ids:
            receiver.wait(tid, timeout=timeout)  # checked, copied out, then dropped
        queue.put("finished")


def _snapshot(cfg: KVBenchConfig, n: int):
    from pdlink.cloud.kv import KVSnapshot

    data = np.random.default_rng(n).standard_normal((cfg.num_layers, 2, n, cfg.num_kv_heads, cfg.head_dim),
                                                    dtype=np.float32)
    return KVSnapshot.build(model_id="smollm2-135m", token_ids=np.arange(n) % 49152, data=data,
                            page_size=cfg.page_size)


def _one_transport(cfg: KVBenchConfig, transport: str) -> list[dict]:
    from pdlink.cloud.kv import Layout, open_sender

    plan = [(n, layout, r) for n in cfg.lengths for layout in Layout for r in range(cfg.repeats)]
    ids = [f"{n}-{layout.value}-{r}" for n, layout, r in plan]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_receive_loop, args=(transport, ids, cfg.timeout_s, queue), daemon=True)
    child.start()
    try:
        address, sender, times = queue.get(timeout=60), open_sender(transport), {}
        snaps = {}
        for (n, layout, _), tid in zip(plan, ids):
            snap = snaps.setdefault(n, _snapshot(cfg, n))
            start = time.perf_counter()
            transfer = sender.send(address, tid, snap, layout, timeout=cfg.timeout_s)
            transfer.wait(timeout=cfg.timeout_s)
            times.setdefault((n, layout.value), []).append((time.perf_counter() - start, transfer.messages))
        queue.get(timeout=cfg.timeout_s)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    rows = []
    for (n, layout), runs in times.items():
        seconds = statistics.median(s for s, _ in runs)
        nbytes = snaps[n].header.nbytes
        rows.append({"transport": transport, "layout": layout, "tokens": n, "bytes": nbytes, "messages": runs[0][1],
                     "seconds_median": seconds, "seconds": [s for s, _ in runs], "gb_per_s": nbytes / seconds / 1e9})
    return rows


def _summary(rows: list[dict]) -> dict:
    """Per transport and length: contiguous time / block time, and the change in percent (paper: -46%)."""
    by = {(r["transport"], r["tokens"], r["layout"]): r["seconds_median"] for r in rows}
    out: dict = {}
    for (transport, n, layout), sec in by.items():
        if layout == "contiguous" and (transport, n, "block") in by:
            ratio = sec / by[(transport, n, "block")]
            out.setdefault(transport, {})[str(n)] = {"contiguous_over_block": round(ratio, 4),
                                                     "change_pct": round((ratio - 1) * 100, 1)}
    for transport, per_len in out.items():
        per_len["mean_change_pct"] = round(statistics.mean(v["change_pct"] for v in per_len.values()), 1)
    return out


def run_kv_transfer_bench(output: str | Path, cfg: KVBenchConfig = KVBenchConfig()) -> dict:
    """Measure every transport x layout x length; write ``kv_transfer.json`` and ``.png`` under ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for transport in cfg.transports for row in _one_transport(cfg, transport)]
    report = {"config": asdict(cfg), "machine": machine_info(1), "results": rows, "summary": _summary(rows),
              "notes": "Sender and receiver processes share this machine (loopback). Times are medians of "
                       f"{cfg.repeats} from send to the sender seeing 'done' (checksum checked by the receiver). "
                       "Compare layouts within one run; the paper reports -46% for contiguous vs block."}
    (out / "kv_transfer.json").write_text(json.dumps(report, indent=2))
    plot_kv_transfer(report, out / "kv_transfer.png")
    return report


def plot_kv_transfer(report: dict, path: Path) -> None:
    """Transfer time vs tokens per transport and layout, and the contiguous/block ratio."""
    from pdlink.bench.plots import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for transport in dict.fromkeys(r["transport"] for r in report["results"]):
        for layout, style in (("contiguous", "-"), ("block", "--")):
            rows = sorted((r for r in report["results"] if r["transport"] == transport and r["layout"] == layout),
                          key=lambda r: r["tokens"])
            left.plot([r["tokens"] for r in rows], [r["seconds_median"] for r in rows], style, marker="o",
                      label=f"{transport} {layout}")
        per_len = {int(k): v["contiguous_over_block"] for k, v in report["summary"].get(transport, {}).items()
                   if k.isdigit()}
        right.plot(sorted(per_len), [per_len[n] for n in sorted(per_len)], marker="o", label=transport)
    left.set(title="KV transfer time", xlabel="tokens", ylabel="seconds", xscale="log", yscale="log")
    right.axhline(0.54, color="grey", linestyle=":", label="paper (-46%)")
    right.set(title="contiguous / block time", xlabel="tokens", ylabel="ratio", xscale="log", ylim=(0, 1.1))
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"pdlink bench kv — {report['machine'].get('cpu', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
