"""Where an engine step spends its time: per-kernel wall time through the Relax VM's instrument hook."""

from __future__ import annotations

import time
from collections import defaultdict


def _kernel_group(symbol: str) -> str:
    """Coarse kernel family of a VM call (e.g. ``fused_linear_add`` -> ``linear``)."""
    name = symbol.lower()
    for group in ("lm_head", "linear", "embed", "attention", "rms_norm", "rotary", "kv_cache", "silu", "add"):
        if group in name:
            return group
    return "other"


def _instrumented(engine, step) -> dict:
    calls: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started[symbol] = time.perf_counter()
        else:
            calls[symbol].append(time.perf_counter() - started.pop(symbol, time.perf_counter()))
        return 0  # VMInstrumentReturnKind.NO_OP

    engine.vm["set_instrument"](instrument)
    try:
        t = time.perf_counter()
        step()
        total = time.perf_counter() - t
    finally:
        engine.vm["set_instrument"](None)
    kernels = {s: {"calls": len(ts), "seconds": sum(ts)} for s, ts in calls.items()}
    groups: dict[str, float] = defaultdict(float)
    for symbol, info in kernels.items():
        groups[_kernel_group(symbol)] += info["seconds"]
    in_kernels = sum(groups.values())
    builtins = {s: info["calls"] for s, info in kernels.items() if "builtin" in s}
    return {
        "wall_s": total,
        "in_vm_calls_s": in_kernels,
        "outside_vm_calls_s": total - in_kernels,
        # the share of the step spent inside the VM's calls; the rest is the VM's own interpretation and Python
        "vm_calls_share": in_kernels / total if total > 0 else None,
        "calls": sum(info["calls"] for info in kernels.values()),
        "builtin_calls": dict(sorted(builtins.items(), key=lambda kv: -kv[1])[:8]),
        "groups_s": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top_kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["seconds"])[:12]),
    }


def profile_engine(engine, prompt_ids: list[int]) -> dict:
    """Profile one prefill of ``prompt_ids`` and one decode step after it (instrumented runs are slower)."""
    seq = engine.add_sequence()
    try:
        holder = {}
        prefill = _instrumented(engine, lambda: holder.setdefault("logits", engine.prefill(seq, prompt_ids)))
        token = int(holder["logits"].argmax())
        decode = _instrumented(engine, lambda: engine.decode(seq, token))
    finally:
        engine.remove_sequence(seq)
    return {"prefill_tokens": len(prompt_ids), "prefill": prefill, "decode": decode}
