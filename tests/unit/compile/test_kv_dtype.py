"""``pdlink compile --kv-dtype``: f32 packages keep float32 KV pages (the reference), 4-bit ones float16."""

from __future__ import annotations

import pytest

from pdlink.compile.builder import CompileConfig
from pdlink.compile.quantization import get_quantization, resolve_kv_dtype


@pytest.mark.parametrize("quant, flag, dtype", [
    ("f32", "auto", "float32"), ("q4_1", "auto", "float16"), ("q4f16", "auto", "float16"), ("f16", "auto", "float16"),
    ("f32", "f16", "float16"), ("q4_1", "f32", "float32"),
])
def test_the_kv_dtype_follows_the_quantization_unless_given(quant, flag, dtype):
    assert resolve_kv_dtype(flag, get_quantization(quant)) == dtype


def test_an_unknown_kv_dtype_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, f16, f32"):
        CompileConfig(model="smollm2-135m", quant="f32", kv_dtype="bf16")
