"""Cloud backends on the real model: torch (batched, left-padded decode) and the compiled f32 package give
transformers' greedy tokens through the scheduler, and both sides hash the tokenizer alike."""

from __future__ import annotations

import numpy as np
import pytest

from pdlink.cloud.outputs import TokenOutput
from pdlink.cloud.request import Request
from pdlink.cloud.scheduler import Scheduler, SchedulerConfig
from tests.model.prompts import chat_prompts
from tests.model.reference import hf_greedy

pytestmark = pytest.mark.model

NUM_TOKENS = 16
NEAR_TIE = 0.05  # logit gap under which two float32 implementations may order the top two differently


@pytest.fixture(scope="module")
def torch_backend():
    from pdlink.cloud.backend import load_backend

    return load_backend("smollm2-135m", threads=2, max_sequences=8, context_window=2048)


@pytest.fixture(scope="module")
def package_backend(f32_package):
    from pdlink.cloud.backend import load_backend

    return load_backend(str(f32_package), threads=2, max_sequences=8, context_window=2048)


@pytest.fixture(scope="module")
def prompts(torch_backend):
    extra = ["Name three primary colors.", "Write a haiku about autumn.", "What does a CPU do?"]
    return [torch_backend.tokenizer.encode_chat(p) for p in chat_prompts() + extra]


def serve_all(backend, prompts, num_tokens=NUM_TOKENS) -> list[list[int]]:
    """Greedy tokens of every prompt, all live at once: chunked prefills, one batched decode per step."""
    sched = Scheduler(backend, SchedulerConfig(step_token_budget=192, prefill_chunk_tokens=96))
    for i, ids in enumerate(prompts):
        sched.add(Request(i, ids, num_tokens))
    out = {i: [] for i in range(len(prompts))}
    for _ in range(2000):
        if not sched.has_work:
            break
        for o in sched.step():
            if isinstance(o, TokenOutput):
                out[o.key].append(o.token_id)
    assert backend.num_sequences == 0
    return [out[i] for i in range(len(prompts))]


def agree_or_near_tie(model, prompt, ours, ref) -> int | None:
    """None when equal; else the divergence index, asserting that transformers saw a near tie there."""
    import torch

    if ours == ref:
        return None
    i = next(j for j, (a, b) in enumerate(zip(ours, ref)) if a != b)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(prompt) + ref[:i]])).logits[0, -1]
    gap = float(logits[ref[i]] - logits[ours[i]])
    assert gap < NEAR_TIE, f"diverged at token {i} with a logit gap of {gap:.4f}: not a near tie"
    return i


def test_torch_backend_hashes_the_tokenizer_like_a_package(torch_backend, f32_package):
    from pdlink.common.package import load_manifest
    from pdlink.common.tokenizer import Tokenizer

    manifest = load_manifest(f32_package, verify_hashes=False)
    package_tok = Tokenizer(f32_package / manifest.tokenizer["file"], manifest.tokenizer)
    assert torch_backend.tokenizer.hash == package_tok.hash
    assert torch_backend.tokenizer.encode_chat("Hi there") == package_tok.encode_chat("Hi there")


def test_torch_backend_batched_greedy_equals_transformers(torch_backend, hf_reference, prompts):
    model, _ = hf_reference
    ours = serve_all(torch_backend, prompts)
    diverged = [agree_or_near_tie(model, p, o, hf_greedy(model, p, NUM_TOKENS)) for p, o in zip(prompts, ours)]
    print(f"\ntorch backend vs transformers: {sum(d is not None for d in diverged)}/{len(prompts)} diverged "
          f"(near ties), at {diverged}")


def test_package_backend_equals_torch_backend(torch_backend, package_backend, hf_reference, prompts):
    model, _ = hf_reference
    a, b = serve_all(torch_backend, prompts), serve_all(package_backend, prompts)
    assert package_backend.tokenizer.hash == torch_backend.tokenizer.hash
    diverged = [agree_or_near_tie(model, p, x, y) for p, x, y in zip(prompts, b, a)]
    print(f"\npackage (f32) vs torch backend: {sum(d is not None for d in diverged)}/{len(prompts)} diverged "
          f"(near ties), at {diverged}")


def test_torch_backend_logits_match_across_batch_layouts(torch_backend, prompts):
    """The same sequence decoded alone and inside a left-padded batch gives (nearly) the same logits."""
    b = torch_backend
    short, long = prompts[0], prompts[3]
    s1 = b.add_sequence()
    b.prefill({s1: short})
    alone = b.decode([s1], [short[-1]])[0]
    s2, s3 = b.add_sequence(), b.add_sequence()
    b.prefill({s2: short, s3: long})
    batched = b.decode([s3, s2], [long[-1], short[-1]])
    for s in (s1, s2, s3):
        b.free_sequence(s)
    assert np.abs(batched[1] - alone).max() < 1e-3
    assert int(np.argmax(batched[1])) == int(np.argmax(alone))
    s4 = b.add_sequence()
    with pytest.raises(ValueError):
        b.prefill({s4: [b.vocab_size]})
    b.free_sequence(s4)
    assert b.num_sequences == 0


def test_torch_backend_scores_prompts_the_same_whatever_the_chunking(torch_backend):
    from pdlink.common.real_text import prompt_of_length

    ids = prompt_of_length(torch_backend.tokenizer.encode, 300)
    scores = []
    for chunk in (300, 64, 7):
        seq = torch_backend.add_sequence()
        torch_backend.track_attention(seq, 16)
        for i in range(0, len(ids), chunk):
            torch_backend.prefill({seq: ids[i:i + chunk]})
        scores.append(torch_backend.prompt_importance(seq))
        torch_backend.free_sequence(seq)
    layers, heads = 30, 9  # SmolLM2-135M
    assert scores[0].shape == (300,) and scores[0].sum() == pytest.approx(layers * heads * 16, rel=1e-4)
    for other in scores[1:]:
        np.testing.assert_allclose(other, scores[0], rtol=1e-3, atol=1e-3)


def test_refinement_keeps_a_planted_fact_the_question_asks_for(torch_backend):
    from pdlink.common.real_text import PLANTED_FACT, fact_positions, planted_fact_text
    from pdlink.cloud.refinement import RefineSpec, kept_fraction_of, select_kept_indices

    tok = torch_backend.tokenizer
    ids = tok.encode_chat(planted_fact_text(5000))
    seq = torch_backend.add_sequence()
    torch_backend.track_attention(seq, 32)
    torch_backend.prefill({seq: ids})
    kept = select_kept_indices(torch_backend.prompt_importance(seq), RefineSpec(keep_ratio=0.5))
    torch_backend.free_sequence(seq)
    assert abs(len(kept) - len(ids) / 2) <= 1
    assert kept_fraction_of(kept, fact_positions(ids, tok.encode(" " + PLANTED_FACT))) >= 0.75
