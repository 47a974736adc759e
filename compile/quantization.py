"""Quantization modes: which weight format each kind of matrix of the model is stored in."""

from __future__ import annotations

from dataclasses import dataclass

from pdlink.compile.weight_format import WEIGHT_FORMATS, WeightFormat


@dataclass(frozen=True)
class Quantization:
    """A named quantization mode (``--quant``)."""

    name: str
    linear: str
    embedding: str
    description: str
    kv_dtype: str = "float16"  # the KV pages' dtype unless ``--kv-dtype`` says otherwise

    @property
    def linear_format(self) -> WeightFormat:
        return WEIGHT_FORMATS[self.linear]

    @property
    def embedding_format(self) -> WeightFormat:
        return WEIGHT_FORMATS[self.embedding]


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("f32", "f32", "f32", "float32 weights and float32 KV (exact reference)", kv_dtype="float32"),
        Quantization("f16", "f16", "f16", "float16 weights, float32 compute"),
        Quantization("q4f16", "q4sym_f16", "q4sym_f16", "group-wise symmetric 4-bit, f16 scales (like MLC q4f16_1)"),
        Quantization("q4f32", "q4sym_f32", "q4sym_f32", "group-wise symmetric 4-bit, f32 scales"),
        Quantization(
            "q4_1",
            "q4_1",
            "q8_0",
            "GGUF Q4_1 linears and Q8_0 embedding, copied bit for bit from a GGUF that has them",
        ),
    )
}


def get_quantization(name: str) -> Quantization:
    """Look up a quantization mode; raises ValueError listing the valid names."""
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown quantization {name!r}; choose one of: {', '.join(QUANTIZATIONS)}") from None


KV_DTYPES = {"f16": "float16", "f32": "float32"}


def resolve_kv_dtype(flag: str, quant: Quantization) -> str:
    """The KV pages' dtype for ``--kv-dtype`` (``auto``: the quantization's own: f32 for ``f32``, else f16);
    raises ValueError naming the choices."""
    if flag == "auto":
        return quant.kv_dtype
    if flag not in KV_DTYPES:
        raise ValueError(f"unknown --kv-dtype {flag!r}; choose one of: auto, {', '.join(KV_DTYPES)}")
    return KV_DTYPES[flag]
