import numpy as np
import pytest

from pdlink.compile.weight_format import GGUF_Q4_1, GGUF_Q8_0, GROUP, WEIGHT_FORMATS


@pytest.fixture
def weights():
    return np.random.default_rng(0).normal(0, 0.05, size=(48, 4 * GROUP)).astype(np.float32)


@pytest.mark.parametrize("name,tolerance", [("f32", 0), ("f16", 1e-3), ("q8_0", 2e-3), ("q4_1", 0.02), ("q4sym_f16", 0.03), ("q4sym_f32", 0.03)])
def test_round_trip_error_is_bounded(weights, name, tolerance):
    fmt = WEIGHT_FORMATS[name]
    arrays = fmt.from_float(weights)
    for suffix, (shape, dtype) in fmt.array_specs(*weights.shape).items():
        assert arrays[suffix].shape == shape and arrays[suffix].dtype == np.dtype(dtype)
    assert np.abs(fmt.to_float(arrays) - weights).max() <= tolerance


def test_encoding_is_row_independent(weights):
    fmt = WEIGHT_FORMATS["q4_1"]
    whole = fmt.from_float(weights)
    top, bottom = fmt.from_float(weights[:16]), fmt.from_float(weights[16:])
    for key in whole:
        assert np.array_equal(whole[key], np.concatenate([top[key], bottom[key]]))


def _q4_1_block_bytes(d, m, nibbles):
    """One GGUF Q4_1 block: f16 d, f16 m, 16 bytes (element j low nibble, element j+16 high)."""
    qs = (nibbles[:16] | (nibbles[16:] << 4)).astype(np.uint8)
    return np.concatenate([np.array([d, m], np.float16).view(np.uint8), qs])


def test_gguf_q4_1_blocks_are_kept_bit_for_bit():
    rng = np.random.default_rng(1)
    nibbles = rng.integers(0, 16, size=(3, 2, GROUP), dtype=np.uint8)
    raw = np.stack([np.concatenate([_q4_1_block_bytes(0.01 * (r + 1), -0.05, nibbles[r, b]) for b in range(2)]) for r in range(3)])
    fmt = WEIGHT_FORMATS["q4_1"]
    arrays = fmt.from_gguf(raw, GGUF_Q4_1)
    expected = nibbles.astype(np.float32) * np.float16(0.01 * np.arange(1, 4))[:, None, None].astype(np.float32) + np.float32(np.float16(-0.05))
    np.testing.assert_array_equal(fmt.to_float(arrays), expected.reshape(3, 2 * GROUP))
    assert fmt.from_gguf(raw, GGUF_Q8_0) is None


def test_gguf_split_agrees_with_gguf_dequantize():
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(2)
    for name, qtype in (("q4_1", gguf.GGMLQuantizationType.Q4_1), ("q8_0", gguf.GGMLQuantizationType.Q8_0)):
        w = rng.normal(0, 0.1, size=(8, 2 * GROUP)).astype(np.float32)
        raw = gguf.quants.quantize(w, qtype)
        ours = WEIGHT_FORMATS[name].to_float(WEIGHT_FORMATS[name].from_gguf(raw, int(qtype)))
        np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, qtype))


def test_block_formats_need_whole_groups():
    with pytest.raises(ValueError, match="divisible"):
        WEIGHT_FORMATS["q4_1"].array_specs(4, 40)
