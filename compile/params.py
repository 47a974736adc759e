"""Turn a checkpoint's logical tensors into the named parameter arrays of a compiled model."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pdlink.compile.checkpoint import MatrixSource
from pdlink.compile.quantization import Quantization
from pdlink.compile.weight_format import WeightFormat

_FUSED = {"self_attn.qkv_proj.w": ("q", "k", "v"), "mlp.gate_up_proj.w": ("gate", "up")}


def encode_matrix(parts: list[MatrixSource], fmt: WeightFormat) -> dict[str, np.ndarray]:
    """Encode row-stacked parts in ``fmt``; raw GGUF blocks already in ``fmt`` are kept bit for bit.

    Every format encodes rows independently, so encoding parts and stacking them equals encoding
    the stacked matrix.
    """
    encoded = []
    for part in parts:
        arrays = None if part.raw is None else fmt.from_gguf(part.raw, part.ggml_type)
        encoded.append(arrays if arrays is not None else fmt.from_float(part.to_float()))
    return {key: np.concatenate([e[key] for e in encoded], axis=0) for key in encoded[0]}


def iter_params(ckpt, quant: Quantization) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(parameter name, array)`` in the model's parameter naming, one matrix at a time."""
    cfg = ckpt.config
    for suffix, arr in encode_matrix([ckpt.matrix("embed")], quant.embedding_format).items():
        yield f"embed_tokens.{suffix}", arr
    for i in range(cfg.num_hidden_layers):
        prefix = f"layers.{i}"
        yield f"{prefix}.input_layernorm.weight", ckpt.vector(f"{prefix}.input_norm")
        yield f"{prefix}.post_attention_layernorm.weight", ckpt.vector(f"{prefix}.post_norm")
        for module, parts in _FUSED.items():
            arrays = encode_matrix([ckpt.matrix(f"{prefix}.{p}") for p in parts], quant.linear_format)
            for suffix, arr in arrays.items():
                yield f"{prefix}.{module}.{suffix}", arr
        for module, part in (("self_attn.o_proj.w", "o"), ("mlp.down_proj.w", "down")):
            for suffix, arr in encode_matrix([ckpt.matrix(f"{prefix}.{part}")], quant.linear_format).items():
                yield f"{prefix}.{module}.{suffix}", arr
    yield "norm.weight", ckpt.vector("norm")
    if not cfg.tie_word_embeddings:
        for suffix, arr in encode_matrix([ckpt.matrix("lm_head")], quant.linear_format).items():
            yield f"lm_head.{suffix}", arr
