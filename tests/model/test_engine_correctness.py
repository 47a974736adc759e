"""The compiled engine against transformers and llama.cpp on the real SmolLM2 model."""

from __future__ import annotations

import pytest

from pdlink.edge.session import common_prefix_length
from pdlink.edge.engine import Engine, EngineConfig
from tests.conftest import device_answer
from tests.model.prompts import chat_prompts
from tests.model.reference import hf_greedy, llamacpp_greedy

pytestmark = pytest.mark.model
NUM_TOKENS = 48


def _engine_greedy(engine, prompt_ids, n):
    return device_answer(engine, prompt_ids, n, ignore_eos=True).token_ids


@pytest.fixture(scope="module")
def prompt_ids(f32_engine):
    return [f32_engine.tokenizer.encode_chat(p) for p in chat_prompts()]


@pytest.fixture(scope="module")
def hf_tokens(hf_reference, prompt_ids):
    model, _ = hf_reference
    return [hf_greedy(model, ids, NUM_TOKENS) for ids in prompt_ids]


def test_tokenizer_matches_transformers(f32_engine, hf_reference):
    _, tok = hf_reference
    for prompt in chat_prompts():
        messages = [{"role": "user", "content": prompt}]
        expected = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert f32_engine.tokenizer.encode_chat(prompt) == list(expected)


def test_prompts_have_different_lengths(prompt_ids):
    lengths = sorted(len(p) for p in prompt_ids)
    assert lengths[0] < 64 and lengths[-1] > 600


def test_f32_greedy_equals_transformers(f32_engine, prompt_ids, hf_tokens):
    for ids, expected in zip(prompt_ids, hf_tokens):
        assert _engine_greedy(f32_engine, ids, NUM_TOKENS) == expected


def _quantized_copy(model, fmt_name: str):
    """transformers' model with every matrix passed through a pdlink weight format (encode, decode)."""
    import copy

    import torch

    from pdlink.compile.weight_format import WEIGHT_FORMATS

    fmt = WEIGHT_FORMATS[fmt_name]
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for _, param in quantized.named_parameters():
            if param.ndim == 2:
                param.copy_(torch.from_numpy(fmt.to_float(fmt.from_float(param.numpy()))))
    return quantized


def test_q4f16_matches_transformers_on_the_same_quantized_weights(q4f16_package, hf_reference, prompt_ids, hf_tokens):
    engine = Engine(EngineConfig(package=str(q4f16_package), num_threads=2))
    ours = [_engine_greedy(engine, ids, 16) for ids in prompt_ids]
    reference = _quantized_copy(hf_reference[0], "q4sym_f16")
    same_weights = [common_prefix_length(a, hf_greedy(reference, ids, 16)) for a, ids in zip(ours, prompt_ids)]
    vs_f32 = [common_prefix_length(a, ref) for a, ref in zip(ours, hf_tokens)]
    # The default model's weights are Q4_1 already: re-quantizing them to symmetric 4-bit loses
    # accuracy a second time, so agreement with the f32 answer is measured and reported, and the
    # kernel is held to transformers running the very same 4-bit weights.
    print(f"q4f16: leading tokens equal to transformers on the same weights = {same_weights}; "
          f"equal to the unquantized model = {vs_f32}")
    assert sum(a >= 8 for a in same_weights) >= 4, same_weights


def test_q4_1_keeps_the_gguf_weights_and_matches_their_answers(q4_1_package, prompt_ids, hf_tokens):
    """q4_1 holds the GGUF's own blocks, which transformers dequantizes: same weights, same answers."""
    engine = Engine(EngineConfig(package=str(q4_1_package), num_threads=2))
    agree = [common_prefix_length(_engine_greedy(engine, ids, 16), ref) for ids, ref in zip(prompt_ids, hf_tokens)]
    print(f"q4_1 vs transformers on the dequantized GGUF: leading tokens in agreement = {agree}")
    assert sum(a >= 8 for a in agree) >= 4, agree


def test_q4_1_differs_from_llamacpp_only_at_near_ties(q4_1_package, prompt_ids, gguf_path):
    """llama.cpp rounds activations to 8 bits (Q8_1) before its 4-bit dot products; pdlink keeps
    them in float32. Their greedy answers may split where two tokens are nearly tied, never elsewhere."""
    if llamacpp_greedy(gguf_path, prompt_ids[0], 1) is None:
        pytest.skip("llama-cpp-python is not installed (make bench-deps)")
    engine = Engine(EngineConfig(package=str(q4_1_package), num_threads=2))
    agree, margins = [], []
    for ids in prompt_ids:
        ours, theirs = _engine_greedy(engine, ids, 16), llamacpp_greedy(gguf_path, ids, 16)
        n = common_prefix_length(ours, theirs)
        agree.append(n)
        if n < 16:
            seq = engine.add_sequence()
            logits = engine.prefill(seq, ids + ours[:n])
            engine.remove_sequence(seq)
            margins.append(float(logits[ours[n]] - logits[theirs[n]]))
    print(f"q4_1 vs llama.cpp: leading tokens in agreement = {agree}; logit margins where they split = {margins}")
    assert all(0 <= m < 0.5 for m in margins), margins
