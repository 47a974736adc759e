"""The cloud profile of this machine: the real package backend timed at a few prompt lengths and batch sizes.

Run once per machine and thread budget; the result goes into ``CLOUD_PROFILES["local-cpu"]`` (with the
date and the raw timings in ``source``) so simulations of the local cloud need no model.
"""

from __future__ import annotations

import time
from dataclasses import replace

from pdlink.sim.cloud_profile import CLOUD_PROFILES, CloudProfile


def measure_local_cloud_profile(package_dir: str, threads: int = 1, lengths: tuple[int, ...] = (128, 512, 1024),
                                batches: tuple[int, ...] = (1, 2, 4, 8, 16), decode_steps: int = 8,
                                context: int = 256) -> CloudProfile:
    """Time ``PackageBackend`` on a compiled package: prefill at ``lengths`` (one request), decode steps at
    ``batches`` sequences of ``context`` tokens; fit prefill speed and its context slowdown, keep TPOT per
    batch. The serving limits are the cloud server's defaults (``pdlink.cloud.config``)."""
    from pdlink.cloud.package_backend import PackageBackend
    from pdlink.common.real_text import prompt_of_length

    backend = PackageBackend(package_dir, model_id="local", threads=threads, max_sequences=max(batches),
                             context_window=max(max(lengths), context) + decode_steps + 8)
    encode = backend.tokenizer.encode
    rates = {}
    for n in lengths:
        seq = backend.add_sequence()
        ids = prompt_of_length(encode, n)
        t0 = time.perf_counter()
        backend.prefill({seq: ids})
        rates[n] = n / (time.perf_counter() - t0)
        backend.free_sequence(seq)
    tpot = {}
    ids = prompt_of_length(encode, context)
    for b in batches:
        seqs = [backend.add_sequence() for _ in range(b)]
        for s in seqs:
            backend.prefill({s: ids})
        backend.decode(seqs, [ids[-1]] * b)  # warm
        t0 = time.perf_counter()
        for _ in range(decode_steps):
            backend.decode(seqs, [ids[-1]] * b)
        tpot[b] = (time.perf_counter() - t0) / decode_steps
        for s in seqs:
            backend.free_sequence(s)
    short, long = min(lengths), max(lengths)
    ratio = rates[short] / rates[long]
    halving = max(0.0, (long / 2 - ratio * short / 2) / (ratio - 1)) if ratio > 1.0 else 0.0
    r0 = rates[short] * (1 + (short / 2) / halving) if halving else rates[short]
    info = backend.info
    source = (f"measured here {time.strftime('%Y-%m-%d')} with PackageBackend ({info.get('quantization')}, "
              f"{info.get('target')}), {threads} thread(s): prefill tok/s {({k: round(v) for k, v in rates.items()})}, "
              f"decode step s by batch {({k: round(v, 4) for k, v in tpot.items()})} at context {context}")
    return replace(CLOUD_PROFILES["local-cpu"], prefill_tok_s=r0, prefill_halving_tokens=halving,
                   tpot_by_batch=tuple(sorted(tpot.items())), source=source, measured=True)
