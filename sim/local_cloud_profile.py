"""The cloud profile of this machine: the real package backend timed as the cloud server runs it.

Run once per machine and thread budget; the result goes into ``CLOUD_PROFILES`` (``local-cpu``: 1 thread,
``local-cpu-2t``: 2 threads, with the date and the raw timings in ``source``) so simulations of the local cloud
need no model.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from pdlink.sim.cloud_profile import CLOUD_PROFILES, CloudProfile


def fit_prefill(points: list[tuple[int, int, float]]) -> tuple[float, float]:
    """(prefill_tok_s, prefill_halving_tokens) of ``CloudProfile.prefill_time_s`` fitted (least squares) to
    timed prefill chunks ``(tokens, context before the chunk, seconds)``: ``t = n / r * (1 + (c + n/2) / H)``
    is linear in ``1/r`` and ``1/(r H)``. Without a context slowdown in the points (or with chunks all at one
    context) the halving is 0 (none) and the speed is the mean rate."""
    n = np.array([p[0] for p in points], float)
    c = np.array([p[1] for p in points], float)
    t = np.array([p[2] for p in points], float)
    if len(set(c + n / 2)) > 1:
        (a, b), *_ = np.linalg.lstsq(np.stack([n, n * (c + n / 2)], axis=1), t, rcond=None)
        if a > 0 and b > 0:
            return float(1 / a), float(a / b)
    return float(n.sum() / t.sum()), 0.0


def fit_decode_halving(short: tuple[int, float], long: tuple[int, float]) -> float:
    """The per-sequence context at which a decode step costs twice a step at context 0, from two timed
    ``(context, seconds)`` batch-1 steps (``t = a + b c``, halving ``a / b``); 0 when the longer context
    was not slower."""
    (c1, t1), (c2, t2) = sorted((short, long))
    if c2 <= c1 or t2 <= t1:
        return 0.0
    slope = (t2 - t1) / (c2 - c1)
    return max(0.0, t1 - slope * c1) / slope


def measure_local_cloud_profile(package_dir: str, threads: int = 1, prompt_tokens: int = 1024,
                                chunk_tokens: int = 256, batches: tuple[int, ...] = (1, 2, 4, 8, 16),
                                decode_steps: int = 8, context: int = 256, name: str = "local-cpu",
                                beside: Sequence[str] | None = None, beside_start_s: float = 5.0,
                                short_context: int | None = None) -> CloudProfile:
    """Time ``PackageBackend`` on a compiled package the way the cloud server drives it: after a warm-up (as
    the server's), a ``prompt_tokens`` prompt prefilled in ``chunk_tokens`` chunks, each chunk timed at its
    context (the decode sequences' prompts, prefilled the same way, add points); decode steps at ``batches``
    sequences of ``context`` tokens. Fits prefill speed and its context slowdown (``fit_prefill``), keeps
    TPOT per batch; with ``short_context`` also times batch 1 at that context and fits the decode step's
    context slowdown (``fit_decode_halving``). The serving limits are the cloud server's defaults
    (``pdlink.cloud.config``).

    ``beside``: a command (argv) run while the timings are taken, started ``beside_start_s`` before them and
    ended after (by its pid): e.g. an emulated device's ``pdlink generate --mode device``, whose real engine
    work shares this machine's cores with the cloud in a replay's pd mode."""
    from pdlink.cloud.package_backend import PackageBackend
    from pdlink.common.real_text import prompt_of_length

    backend = PackageBackend(package_dir, model_id="local", threads=threads, max_sequences=max(batches),
                             context_window=max(prompt_tokens, context) + decode_steps + 8)
    encode = backend.tokenizer.encode
    points: list[tuple[int, int, float]] = []

    def prefill(ids: list[int], timed: bool = True) -> int:
        seq = backend.add_sequence()
        for a in range(0, len(ids), chunk_tokens):
            chunk = ids[a:a + chunk_tokens]
            t0 = time.perf_counter()
            backend.prefill({seq: chunk})
            if timed:
                points.append((len(chunk), a, time.perf_counter() - t0))
        return seq

    warm = prefill(prompt_of_length(encode, chunk_tokens), timed=False)  # the first calls pay one-time costs
    backend.decode([warm], [0])
    backend.free_sequence(warm)
    neighbour = subprocess.Popen(list(beside), stdout=subprocess.DEVNULL) if beside else None
    if neighbour is not None:
        time.sleep(beside_start_s)
    backend.free_sequence(prefill(prompt_of_length(encode, prompt_tokens)))
    def decode_step_s(ids: list[int], batch: int) -> float:
        """Seconds per decode step of ``batch`` sequences holding ``ids`` (after one warm step)."""
        seqs = [prefill(ids) for _ in range(batch)]
        backend.decode(seqs, [ids[-1]] * batch)  # warm
        t0 = time.perf_counter()
        for _ in range(decode_steps):
            backend.decode(seqs, [ids[-1]] * batch)
        elapsed = (time.perf_counter() - t0) / decode_steps
        for s in seqs:
            backend.free_sequence(s)
        return elapsed

    ids = prompt_of_length(encode, context)
    tpot = {b: decode_step_s(ids, b) for b in batches}
    halving = 0.0
    if short_context and 1 in tpot:
        short = decode_step_s(prompt_of_length(encode, short_context), 1)
        halving = fit_decode_halving((short_context, short), (context, tpot[1]))
    if neighbour is not None:
        if neighbour.poll() is not None:
            raise RuntimeError(f"the command beside the measurement ended before it (exit {neighbour.returncode}): "
                               "the timings are not all beside it; give it a longer task")
        neighbour.terminate()
        neighbour.wait()
    rate, prefill_halving = fit_prefill(points)
    by_context: dict[int, list[float]] = {}
    for n, c, t in points:
        by_context.setdefault(c, []).append(n / t)
    info = backend.info
    source = (f"measured here {time.strftime('%Y-%m-%d')} with PackageBackend ({info.get('quantization')}, "
              f"{info.get('target')}), {threads} thread(s), after a warm-up: prefill in {chunk_tokens}-token chunks, "
              f"tok/s by context {({c: round(float(np.median(v))) for c, v in sorted(by_context.items())})} "
              f"(fit: {rate:.0f} tok/s, halving {prefill_halving:.0f} tokens); decode step s by batch "
              f"{({k: round(v, 4) for k, v in tpot.items()})} at context {context}"
              + (f" (decode halving {halving:.0f} tokens from batch 1 at context {short_context})" if halving else "")
              + (f"; while this ran beside it: {' '.join(beside)}" if beside else ""))
    return replace(CLOUD_PROFILES["local-cpu"], name=name, prefill_tok_s=round(rate, 1),
                   prefill_halving_tokens=round(prefill_halving), tpot_by_batch=tuple(sorted(tpot.items())),
                   tpot_context_tokens=context, decode_halving_tokens=round(halving), source=source, measured=True)
