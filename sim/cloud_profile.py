"""Cloud speed profiles for the simulator: how fast one serving accelerator prefills and decodes.

A profile gives the cost of one continuous-batching step (``pdlink.sim.batching_cloud``)::

    step = step_overhead_s + sum(prefill(chunk, context)) + decode_step(batch)
    prefill(n tokens at context c) = n / prefill_tok_s * (1 + (c + n/2) / prefill_halving_tokens)
    decode_step(B) = piecewise-linear in B through ``tpot_by_batch`` (flat below the first point,
                     the last slope beyond the last point)

plus the serving limits (admission: at most ``max_concurrent`` live requests and an estimated TTFT of at
most ``ttft_budget_s``; batching: ``step_token_budget`` prompt tokens per step, ``prefill_chunk_tokens`` per
request per step, as in ``pdlink.cloud.scheduler``). Every named profile keeps its public source beside
its numbers; ``local-cpu`` was measured on this machine with ``measure_local_cloud_profile``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CloudProfile:
    """Speeds and serving limits of one cloud accelerator running one model (see the module docstring)."""

    name: str
    prefill_tok_s: float
    tpot_by_batch: tuple[tuple[int, float], ...]  # (batch size, seconds per batched decode step), batch rising
    prefill_halving_tokens: float = 0.0
    step_overhead_s: float = 0.0
    max_concurrent: int = 256
    step_token_budget: int = 8192
    prefill_chunk_tokens: int = 2048
    ttft_budget_s: float = 10.0
    max_sequences: int = 0  # sequences holding KV at once (0: max_concurrent); later ones wait, as in the server
    source: str = ""
    measured: bool = False  # True: measured on this machine (not a published figure)

    def __post_init__(self):
        object.__setattr__(self, "tpot_by_batch", tuple((int(b), float(s)) for b, s in self.tpot_by_batch))
        if self.prefill_tok_s <= 0 or self.prefill_halving_tokens < 0 or self.step_overhead_s < 0:
            raise ValueError(f"cloud profile {self.name!r}: prefill_tok_s must be > 0, halving and overhead >= 0")
        if not self.tpot_by_batch or any(b < 1 or s <= 0 for b, s in self.tpot_by_batch):
            raise ValueError(f"cloud profile {self.name!r}: tpot_by_batch needs (batch >= 1, seconds > 0) points")
        if any(b2 <= b1 for (b1, _), (b2, _) in zip(self.tpot_by_batch, self.tpot_by_batch[1:])):
            raise ValueError(f"cloud profile {self.name!r}: tpot_by_batch batches must rise strictly")
        if self.max_concurrent < 1 or self.prefill_chunk_tokens < 1 or self.ttft_budget_s <= 0:
            raise ValueError(f"cloud profile {self.name!r}: max_concurrent, prefill_chunk_tokens and ttft_budget_s "
                             "must be positive")
        if self.max_sequences < 0:
            raise ValueError(f"cloud profile {self.name!r}: max_sequences must be >= 0 (0: max_concurrent)")
        if self.prefill_chunk_tokens > self.step_token_budget:
            raise ValueError(f"cloud profile {self.name!r}: prefill_chunk_tokens must be <= step_token_budget")

    @property
    def sequence_limit(self) -> int:
        return self.max_sequences or self.max_concurrent

    def prefill_time_s(self, num_tokens: int, context: int = 0) -> float:
        """Seconds to prefill ``num_tokens`` appended after ``context`` cached tokens."""
        middle = context + num_tokens / 2
        slow = 1 + middle / self.prefill_halving_tokens if self.prefill_halving_tokens else 1.0
        return num_tokens / self.prefill_tok_s * slow

    def decode_step_s(self, batch: int) -> float:
        """Seconds of one batched decode step over ``batch`` sequences (0 for an empty batch)."""
        if batch <= 0:
            return 0.0
        points = self.tpot_by_batch
        if batch <= points[0][0] or len(points) == 1:
            return points[0][1] if batch <= points[0][0] else points[0][1] * batch / points[0][0]
        for (b1, s1), (b2, s2) in zip(points, points[1:]):
            if batch <= b2:
                return s1 + (s2 - s1) * (batch - b1) / (b2 - b1)
        (b1, s1), (b2, s2) = points[-2], points[-1]
        return s2 + (s2 - s1) / (b2 - b1) * (batch - b2)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CloudProfile":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["tpot_by_batch"] = tuple(tuple(p) for p in known.get("tpot_by_batch", ()))
        return cls(**known)


# Published serving figures of sub-1B models (the class of the device's model) with vLLM, and this machine.
# vLLM's default max_num_seqs (256) is the admission limit of the GPU profiles; steps hold at most 2048 prompt
# tokens (vLLM's chunked-prefill max_num_batched_tokens default), so a step stalls decoding for ~40 ms at most.
CLOUD_PROFILES: dict[str, CloudProfile] = {
    "h100-vllm": CloudProfile(
        name="h100-vllm", prefill_tok_s=48_600.0, tpot_by_batch=((5, 0.00239), (256, 0.00545)),
        max_concurrent=256, step_token_budget=2048, prefill_chunk_tokens=1024,
        source="NVIDIA H100 80GB HBM3, Qwen3-0.6B bf16, vLLM 0.19, `vllm bench serve` random 512 in / 128 out: "
               "rate=inf 94.91 req/s (=> >= 48.6k prompt tok/s while decoding) with TPOT 5.45 ms (batch taken as "
               "max_num_seqs 256); rate=16 TTFT 38.9 ms, TPOT 2.39 ms (batch ~5 by Little's law) -- "
               "ovg-project/kvcached PR #331, benchmarks/bench_layout/H100_results.md",
    ),
    "l4-vllm": CloudProfile(
        name="l4-vllm", prefill_tok_s=9_500.0,
        tpot_by_batch=((1, 0.0051), (2, 0.0052), (4, 0.0053), (8, 0.0055), (16, 0.0060), (32, 0.0071)),
        max_concurrent=256, step_token_budget=2048, prefill_chunk_tokens=1024,
        source="NVIDIA L4 24GB, Qwen2.5-0.5B-Instruct bf16, vLLM 0.23, 256 in / 128 out closed loop: ITL p50 "
               "5.1/5.2/5.3/5.5/6.0/7.1 ms at concurrency 1/2/4/8/16/32; TTFT p50 27.0 ms at concurrency 1 "
               "(=> ~9.5k prompt tok/s, API overhead included) -- https://ai.wmx.dev/benchmarks",
    ),
    # Measured here with measure_local_cloud_profile(/tmp/simpkg, threads=1) on 2026-12-01: SmolLM2-135M q4_1 host
    # package, PackageBackend, 1 thread, on the shared 2-vCPU Xeon (other jobs running: figures swing several-fold).
    # The 128-token prefill (120 tok/s) included warm-up, so the speed is the 512/1024 mean; limits are the cloud
    # server's defaults (64 live requests, 16 sequences holding KV, 512-token steps, 256-token chunks).
    "local-cpu": CloudProfile(
        name="local-cpu", prefill_tok_s=173.0,
        tpot_by_batch=((1, 0.0140), (2, 0.0296), (4, 0.0884), (8, 0.1138), (16, 0.9299)),
        max_concurrent=64, max_sequences=16, step_token_budget=512, prefill_chunk_tokens=256, ttft_budget_s=10.0,
        source="measured here 2026-12-01, PackageBackend on the q4_1 host package of SmolLM2-135M, 1 thread: prefill "
               "tok/s {128: 120 (warm-up), 512: 177, 1024: 170}; decode step s by batch {1: 0.014, 2: 0.0296, "
               "4: 0.0884, 8: 0.1138, 16: 0.9299} at context 256 (shared machine)",
        measured=True,
    ),
}


def named_cloud_profile(name: str) -> CloudProfile:
    """A cloud profile of the table by name, or one read from a JSON file of its fields (a path ending in
    ``.json``); ValueError listing the names otherwise."""
    if name.endswith(".json"):
        return CloudProfile.from_json(json.loads(Path(name).read_text()))
    if name not in CLOUD_PROFILES:
        raise ValueError(f"unknown cloud profile {name!r}; choose one of {sorted(CLOUD_PROFILES)} or a .json file")
    return CLOUD_PROFILES[name]
