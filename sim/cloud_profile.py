"""Cloud speed profiles for the simulator: how fast one serving accelerator prefills and decodes.

A profile gives the cost of one continuous-batching step (``pdlink.sim.batching_cloud``), in one of two forms.
With memory figures (``mem_bw_bytes_s`` > 0; the GPU profiles) decode is memory-bound: a step reads the weights
once and every decoding sequence's KV cache, and a prefill chunk's weight reads are the same read::

    step = step_overhead_s + max(sum(prefill(chunk, context)), weights_bytes / BW)
           + B * seq_overhead_s + sum(decoding contexts) * kv_bytes_per_token / BW

and the KV cache holds at most ``capacity_tokens = (kv_mem_fraction * hbm_bytes - weights_bytes) /
kv_bytes_per_token`` tokens (a request holds its prompt + leading tokens from its first chunk to its end).
Without them (the table form; ``local-cpu``)::

    step = step_overhead_s + sum(prefill(chunk, context)) + decode_step(batch, contexts)
    decode_step(B, contexts) = piecewise-linear in B through ``tpot_by_batch`` (flat below the first point,
                     the last slope beyond the last point), timed at ``tpot_context_tokens`` per sequence,
                     times (1 + c / decode_halving_tokens) / (1 + tpot_context_tokens / decode_halving_tokens)
                     for a mean context c per sequence (1 without a decode halving)

and in both ``prefill(n tokens at context c) = n / prefill_tok_s * (1 + (c + n/2) / prefill_halving_tokens)``.
The GPU profiles' numbers and their calibration are in ``pdlink.sim.cloud_calibration``.

plus the serving limits (admission: at most ``max_concurrent`` live requests and an estimated TTFT of at
most ``ttft_budget_s``; batching: ``step_token_budget`` prompt tokens per step, ``prefill_chunk_tokens`` per
request per step, as in ``pdlink.cloud.scheduler``). Every named profile keeps its public source beside
its numbers; ``local-cpu`` was measured on this machine with ``measure_local_cloud_profile``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pdlink.sim.cloud_calibration import BW_EFFICIENCY, GPUS, KV_MEM_FRACTION, MODELS, calibrated_costs


@dataclass(frozen=True)
class CloudProfile:
    """Speeds and serving limits of one cloud accelerator running one model (see the module docstring)."""

    name: str
    prefill_tok_s: float
    tpot_by_batch: tuple[tuple[int, float], ...] = ()  # table form: (batch, seconds per decode step), batch rising
    prefill_halving_tokens: float = 0.0
    # table form: tpot_by_batch was timed with sequences of tpot_context_tokens each; a decode step's cost doubles
    # (over context 0) at decode_halving_tokens per sequence (0: decode cost independent of context)
    tpot_context_tokens: int = 0
    decode_halving_tokens: float = 0.0
    step_overhead_s: float = 0.0
    max_concurrent: int = 256
    step_token_budget: int = 8192
    prefill_chunk_tokens: int = 2048
    ttft_budget_s: float = 10.0
    max_sequences: int = 0  # sequences holding KV at once (0: max_concurrent); later ones wait, as in the server
    source: str = ""
    measured: bool = False  # True: measured on this machine (not a published figure)
    # The memory form (all 0: the table form): bytes read per step and the KV cache's room.
    model: str = ""  # the model whose bytes these are
    weights_bytes: float = 0.0
    kv_bytes_per_token: float = 0.0
    hbm_bytes: float = 0.0  # accelerator memory (0: KV room not limited)
    mem_bw_bytes_s: float = 0.0  # achieved memory bandwidth
    seq_overhead_s: float = 0.0  # per decoding sequence per step (sampling, scheduling, per-sequence kernels)
    kv_mem_fraction: float = 0.9  # share of memory for weights + KV (vLLM's gpu_memory_utilization)

    def __post_init__(self):
        object.__setattr__(self, "tpot_by_batch", tuple((int(b), float(s)) for b, s in self.tpot_by_batch))
        if self.prefill_tok_s <= 0 or self.prefill_halving_tokens < 0 or self.step_overhead_s < 0:
            raise ValueError(f"cloud profile {self.name!r}: prefill_tok_s must be > 0, halving and overhead >= 0")
        if self.decode_halving_tokens < 0 or self.tpot_context_tokens < 0:
            raise ValueError(f"cloud profile {self.name!r}: decode_halving_tokens and tpot_context_tokens must be >= 0")
        if min(self.weights_bytes, self.kv_bytes_per_token, self.hbm_bytes, self.mem_bw_bytes_s,
               self.seq_overhead_s) < 0 or not 0 < self.kv_mem_fraction <= 1:
            raise ValueError(f"cloud profile {self.name!r}: memory figures must be >= 0, kv_mem_fraction in (0, 1]")
        if self.memory_bound and self.kv_bytes_per_token <= 0:
            raise ValueError(f"cloud profile {self.name!r}: the memory form needs kv_bytes_per_token > 0")
        if self.hbm_bytes and self.capacity_tokens < 1:
            raise ValueError(f"cloud profile {self.name!r}: the weights leave no memory for the KV cache")
        if not self.memory_bound and not self.tpot_by_batch:
            raise ValueError(f"cloud profile {self.name!r}: give tpot_by_batch points or the memory figures "
                             "(mem_bw_bytes_s, weights_bytes, kv_bytes_per_token)")
        if any(b < 1 or s <= 0 for b, s in self.tpot_by_batch):
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

    @property
    def memory_bound(self) -> bool:
        """True: the memory form (see the module docstring)."""
        return self.mem_bw_bytes_s > 0

    @property
    def capacity_tokens(self) -> int:
        """Tokens the KV cache holds at once (0: not limited)."""
        if not (self.hbm_bytes and self.kv_bytes_per_token):
            return 0
        return max(0, int((self.kv_mem_fraction * self.hbm_bytes - self.weights_bytes) / self.kv_bytes_per_token))

    def step_s(self, prefill_s: float, batch: int, context_tokens: int = 0) -> float:
        """Seconds of one step: ``prefill_s`` of prompt chunks plus one decode of ``batch`` sequences holding
        ``context_tokens`` tokens in all (module docstring)."""
        if not self.memory_bound:
            return self.step_overhead_s + prefill_s + self.decode_step_s(batch, context_tokens)
        if prefill_s <= 0 and batch <= 0:
            return self.step_overhead_s
        return (self.step_overhead_s + max(prefill_s, self.weights_bytes / self.mem_bw_bytes_s)
                + batch * self.seq_overhead_s + context_tokens * self.kv_bytes_per_token / self.mem_bw_bytes_s)

    def prefill_time_s(self, num_tokens: int, context: int = 0) -> float:
        """Seconds to prefill ``num_tokens`` appended after ``context`` cached tokens."""
        middle = context + num_tokens / 2
        slow = 1 + middle / self.prefill_halving_tokens if self.prefill_halving_tokens else 1.0
        return num_tokens / self.prefill_tok_s * slow

    def decode_step_s(self, batch: int, context_tokens: int = 0) -> float:
        """Seconds of one batched decode step over ``batch`` sequences holding ``context_tokens`` in all, without
        the step overhead (0 for an empty batch)."""
        if batch <= 0:
            return 0.0
        if self.memory_bound:
            return self.step_s(0.0, batch, context_tokens) - self.step_overhead_s
        h = self.decode_halving_tokens
        scale = (1 + context_tokens / batch / h) / (1 + self.tpot_context_tokens / h) if h else 1.0
        return self._table_step_s(batch) * scale

    def _table_step_s(self, batch: int) -> float:
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


def _gpu_profile(name: str, gpu: str, published_prefill_tok_s: float, published_model: str, run: str) -> CloudProfile:
    """A GPU profile in the memory form for Llama-3.2-1B (the device's model class): the GPU's memory and
    bandwidth from its datasheet (times ``BW_EFFICIENCY``), the per-step costs fitted to the cited run's TPOT
    points, the run's prefill speed scaled by non-embedding parameters (prefill is compute-bound: FLOPs per
    token ~ 2 * non-embedding params), attention's share of prefill from the model's FLOPs."""
    g, model, ran = GPUS[gpu], MODELS["llama-3.2-1b"], MODELS[published_model]
    overhead, per_seq = calibrated_costs(name)
    prefill = published_prefill_tok_s * ran.non_embedding_params / model.non_embedding_params
    return CloudProfile(
        name=name, prefill_tok_s=round(prefill, 1), prefill_halving_tokens=round(model.prefill_halving_tokens),
        step_overhead_s=overhead, seq_overhead_s=per_seq, model=model.name, weights_bytes=model.weights_bytes,
        kv_bytes_per_token=model.kv_bytes_per_token, hbm_bytes=g.hbm_bytes,
        mem_bw_bytes_s=g.peak_bw_bytes_s * BW_EFFICIENCY, kv_mem_fraction=KV_MEM_FRACTION,
        max_concurrent=256, step_token_budget=2048, prefill_chunk_tokens=1024,
        source=f"memory form for {model.name} ({model.source}); {g.source}, bandwidth x {BW_EFFICIENCY} "
               f"(assumed achieved share); step and per-sequence overheads fitted to the TPOT points of: {run} "
               f"(pdlink.sim.cloud_calibration.PUBLISHED_TPOT, {published_model}: {ran.source}); prefill "
               f"{published_prefill_tok_s:.0f} tok/s of that run x {ran.non_embedding_params / 1e9:.2f}B / "
               f"{model.non_embedding_params / 1e9:.2f}B non-embedding params; KV room: vLLM's "
               f"gpu_memory_utilization {KV_MEM_FRACTION}",
    )


# Published serving figures of sub-1B models with vLLM, carried to Llama-3.2-1B (the class of the device's model),
# and this machine. vLLM's default max_num_seqs (256) is the admission limit of the GPU profiles; steps hold at most
# 2048 prompt tokens (vLLM's chunked-prefill max_num_batched_tokens default) and 1024 per request.
CLOUD_PROFILES: dict[str, CloudProfile] = {
    "h100-vllm": _gpu_profile(
        "h100-vllm", "h100-sxm-80gb", 48_600.0, "qwen3-0.6b",
        "NVIDIA H100 80GB HBM3, Qwen3-0.6B bf16, vLLM 0.19, `vllm bench serve` random 512 in / 128 out: "
        "rate=inf 94.91 req/s (=> >= 48.6k prompt tok/s while decoding) with TPOT 5.45 ms (decode batch ~66 by "
        "Little's law); rate=16 TTFT 38.9 ms, TPOT 2.39 ms (batch ~5) -- ovg-project/kvcached PR #331, "
        "benchmarks/bench_layout/H100_results.md"),
    "l4-vllm": _gpu_profile(
        "l4-vllm", "l4", 9_500.0, "qwen2.5-0.5b",
        "NVIDIA L4 24GB, Qwen2.5-0.5B-Instruct bf16, vLLM 0.23, 256 in / 128 out closed loop: ITL p50 "
        "5.1/5.2/5.3/5.5/6.0/7.1 ms at concurrency 1/2/4/8/16/32; TTFT p50 27.0 ms at concurrency 1 "
        "(=> ~9.5k prompt tok/s, API overhead included) -- https://ai.wmx.dev/benchmarks"),
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
# Measured here 2026-12-01 with measure_local_cloud_profile(<the replay's package>, threads=2, prompt_tokens=3000,
# chunk_tokens=1024, batches=(1, 2), context=3000) (docs/sim.md, Validation): the replay's cloud server
# (`pdlink bench trace --cloud-threads 2`), nothing else running; the server's default limits (the replay's own
# come from bench/trace_sim.py: replay_cloud_profile).
CLOUD_PROFILES["local-cpu-2t"] = replace(
    CLOUD_PROFILES["local-cpu"], name="local-cpu-2t", prefill_tok_s=353.9, prefill_halving_tokens=5698,
    tpot_by_batch=((1, 0.0185), (2, 0.034)),
    source="measured here 2026-12-01, PackageBackend on the q4_1 host package of SmolLM2-135M, 2 threads, after a "
           "warm-up: a 3000-token prompt in 1024-token chunks, tok/s by context {0: 324, 1024: 278, 2048: 245} (fit "
           "354 tok/s, halving 5698 tokens); decode step s by batch {1: 0.0185, 2: 0.034} at context 3000")
# The same measurement while an emulated phone (`pdlink generate --mode device --device-profile phone --threads 1`,
# a 3000-token prompt) ran beside it, as in a replay's pd mode on this 2-core machine: the device's real engine
# work takes core time from the cloud. One run; the neighbour's bursts make it noisy (batch-1 decode caught one).
CLOUD_PROFILES["local-cpu-2t-beside-phone"] = replace(
    CLOUD_PROFILES["local-cpu-2t"], name="local-cpu-2t-beside-phone", prefill_tok_s=343.7,
    prefill_halving_tokens=3069, tpot_by_batch=((1, 0.0707), (2, 0.0317)),
    source="measured here 2026-12-01 as local-cpu-2t, with an emulated phone (pdlink generate --mode device "
           "--device-profile phone --threads 1, 3000-token prompt) running beside it: tok/s by context {0: 278, "
           "1024: 292, 2048: 167} (fit 344 tok/s, halving 3069 tokens); decode step s by batch "
           "{1: 0.0707, 2: 0.0317} at context 3000 (noisy: the neighbour computes in bursts)")

# Measured here 2026-12-01 with measure_local_cloud_profile(<the replay's package>, threads=1, prompt_tokens=3000,
# chunk_tokens=1024, batches=(1, 2), context=3000, short_context=256) under `taskset -c 0`: the replay's cloud
# server under `pdlink bench trace --cloud-threads 1 --pin-cores`, whose devices compute on the other core.
CLOUD_PROFILES["local-cpu-1t"] = replace(
    CLOUD_PROFILES["local-cpu"], name="local-cpu-1t", prefill_tok_s=190.6, prefill_halving_tokens=6042,
    tpot_by_batch=((1, 0.0266), (2, 0.0507)), tpot_context_tokens=3000, decode_halving_tokens=1900,
    source="measured here 2026-12-01, PackageBackend on the q4_1 host package of SmolLM2-135M, 1 thread pinned to "
           "its own core, after a warm-up: a 3000-token prompt in 1024-token chunks, tok/s by context {0: 175, "
           "1024: 155, 2048: 136} (fit 191 tok/s, halving 6042 tokens); decode step s by batch {1: 0.0266, "
           "2: 0.0507} at context 3000, batch 1 at context 256: decode halving 1900 tokens")

def named_cloud_profile(name: str) -> CloudProfile:
    """A cloud profile of the table by name, or one read from a JSON file of its fields (a path ending in
    ``.json``); ValueError listing the names otherwise."""
    if name.endswith(".json"):
        return CloudProfile.from_json(json.loads(Path(name).read_text()))
    if name not in CLOUD_PROFILES:
        raise ValueError(f"unknown cloud profile {name!r}; choose one of {sorted(CLOUD_PROFILES)} or a .json file")
    return CLOUD_PROFILES[name]
