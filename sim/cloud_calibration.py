"""Where the GPU cloud profiles' memory model gets its numbers: model and accelerator specs (with sources), the
published TPOT points of the serving runs the profiles cite, and the fit of the per-step costs to them.

A decode step on a GPU is memory-bound: it reads the weights once and every live sequence's KV cache, so

    step(B sequences, C context tokens in all) = step_overhead_s + B * seq_overhead_s + (weights + C * kv) / BW

``fit_step_costs`` solves ``step_overhead_s`` and ``seq_overhead_s`` (least squares, both >= 0) from the
published points of the model that was measured (its own bytes), at an achieved bandwidth of
``BW_EFFICIENCY`` times the datasheet peak; the GPU profiles then keep those two costs and take the bytes of
the device's model class (Llama-3.2-1B). ``tpot_errors`` is the check: the model against every point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BW_EFFICIENCY = 0.8  # assumed: achieved/peak memory bandwidth of decode kernels (copy benchmarks reach ~0.8-0.9)
KV_MEM_FRACTION = 0.9  # vLLM's gpu_memory_utilization default: weights + KV cache fill this share of memory


@dataclass(frozen=True)
class ModelSpec:
    """What decode reads per step: the weights (bf16) and the KV cache per token."""

    name: str
    params: float
    non_embedding_params: float
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    dtype_bytes: int = 2
    source: str = ""

    @property
    def weights_bytes(self) -> float:
        return self.params * self.dtype_bytes  # tied embeddings: the LM head read is the embedding table

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def prefill_halving_tokens(self) -> float:
        """Context at which a prefill token's attention FLOPs (4 * layers * hidden * context) equal its linear
        FLOPs (2 * non-embedding params): the ``prefill_halving_tokens`` of a cloud profile."""
        return 2 * self.non_embedding_params / (4 * self.layers * self.hidden)


@dataclass(frozen=True)
class GpuSpec:
    name: str
    hbm_bytes: float
    peak_bw_bytes_s: float
    source: str = ""


MODELS: dict[str, ModelSpec] = {
    "llama-3.2-1b": ModelSpec(
        "llama-3.2-1b", params=1.236e9, non_embedding_params=1.236e9 - 128_256 * 2048, layers=16, kv_heads=8,
        head_dim=64, hidden=2048,
        source="meta-llama/Llama-3.2-1B model card and config.json (1.23B params, 16 layers, hidden 2048, 32 heads / "
               "8 KV heads, head_dim 64, vocab 128256, tied embeddings, bf16): 32 KiB KV per token"),
    "qwen3-0.6b": ModelSpec(
        "qwen3-0.6b", params=0.6e9, non_embedding_params=0.44e9, layers=28, kv_heads=8, head_dim=128, hidden=1024,
        source="Qwen/Qwen3-0.6B model card (0.6B params, 0.44B non-embedding, 28 layers, 16 Q / 8 KV heads) and "
               "config.json (head_dim 128, hidden 1024, tied embeddings): 112 KiB KV per token"),
    "qwen2.5-0.5b": ModelSpec(
        "qwen2.5-0.5b", params=0.49e9, non_embedding_params=0.36e9, layers=24, kv_heads=2, head_dim=64, hidden=896,
        source="Qwen/Qwen2.5-0.5B-Instruct model card (0.49B params, 0.36B non-embedding, 24 layers, 14 Q / 2 KV "
               "heads) and config.json (hidden 896, head_dim 64, tied embeddings): 12 KiB KV per token"),
}

GPUS: dict[str, GpuSpec] = {
    "h100-sxm-80gb": GpuSpec("h100-sxm-80gb", 80e9, 3.35e12,
                             "NVIDIA H100 datasheet (H100 SXM: 80 GB HBM3, 3.35 TB/s), "
                             "https://www.nvidia.com/en-us/data-center/h100/"),
    "l4": GpuSpec("l4", 24e9, 300e9, "NVIDIA L4 datasheet (24 GB GDDR6, 300 GB/s), "
                                     "https://www.nvidia.com/en-us/data-center/l4/"),
}


@dataclass(frozen=True)
class TpotPoint:
    """One published decode step time: ``batch`` sequences at ``context`` tokens each (mean over the answer)."""

    batch: int
    context: int
    tpot_s: float


# The points of the runs each GPU profile cites (see its ``source``). H100, Qwen3-0.6B, 512 in / 128 out (mean
# context 576): rate 16 -> TPOT 2.39 ms at batch ~5; rate inf -> 94.91 req/s at TPOT 5.45 ms, i.e. a decode batch of
# 94.91 * 127 * 5.45 ms ~ 66 by Little's law (256, vLLM's max_num_seqs, cannot be: 256 sequences' KV, 16.9 GB,
# plus the weights are not read in 5.45 ms at 3.35 TB/s). L4, Qwen2.5-0.5B, 256 in / 128 out closed loop (context 320).
PUBLISHED_TPOT: dict[str, tuple[str, str, tuple[TpotPoint, ...]]] = {
    "h100-vllm": ("h100-sxm-80gb", "qwen3-0.6b", (TpotPoint(5, 576, 0.00239), TpotPoint(66, 576, 0.00545))),
    "l4-vllm": ("l4", "qwen2.5-0.5b", tuple(TpotPoint(b, 320, s) for b, s in
                                            ((1, 0.0051), (2, 0.0052), (4, 0.0053), (8, 0.0055), (16, 0.0060),
                                             (32, 0.0071)))),
}


def step_s(point: TpotPoint, model: ModelSpec, bw: float, step_overhead_s: float, seq_overhead_s: float) -> float:
    return (step_overhead_s + point.batch * seq_overhead_s
            + (model.weights_bytes + point.batch * point.context * model.kv_bytes_per_token) / bw)


def fit_step_costs(points: tuple[TpotPoint, ...], model: ModelSpec, bw: float) -> tuple[float, float]:
    """(step_overhead_s, seq_overhead_s) >= 0 that best fit ``points`` (least squares) at bandwidth ``bw``."""
    rest = np.array([p.tpot_s - (model.weights_bytes + p.batch * p.context * model.kv_bytes_per_token) / bw
                     for p in points])
    batches = np.array([p.batch for p in points], dtype=float)
    a = np.stack([np.ones_like(batches), batches], axis=1)
    (o, s), *_ = np.linalg.lstsq(a, rest, rcond=None)
    if s < 0:
        o, s = float(np.mean(rest)), 0.0
    if o < 0:
        o, s = 0.0, float(max(0.0, np.dot(batches, rest) / np.dot(batches, batches)))
    return float(o), float(s)


def calibrated_costs(profile_name: str) -> tuple[float, float]:
    """The fitted (step_overhead_s, seq_overhead_s) of a GPU profile, from its published points."""
    gpu, model, points = PUBLISHED_TPOT[profile_name]
    return fit_step_costs(points, MODELS[model], GPUS[gpu].peak_bw_bytes_s * BW_EFFICIENCY)


def tpot_errors(profile_name: str) -> list[dict]:
    """The calibrated model against each published point of the profile's run (relative error)."""
    gpu, model, points = PUBLISHED_TPOT[profile_name]
    bw = GPUS[gpu].peak_bw_bytes_s * BW_EFFICIENCY
    o, s = calibrated_costs(profile_name)
    out = []
    for p in points:
        m = step_s(p, MODELS[model], bw, o, s)
        out.append({"batch": p.batch, "context": p.context, "published_s": p.tpot_s, "model_s": m,
                    "relative_error": abs(m - p.tpot_s) / p.tpot_s})
    return out
