"""Tuning changes speed, never answers: a build with pdlink's matmul schedules and one with plain,
unscheduled matmuls give the same greedy tokens."""

from __future__ import annotations

import pytest

from pdlink.edge.engine import Engine, EngineConfig
from tests.conftest import device_answer
from tests.conftest import build_cached_package

pytestmark = pytest.mark.model
NUM_TOKENS = 8


def _greedy(package, prompt: str) -> list[int]:
    engine = Engine(EngineConfig(package=str(package), num_threads=2, context_window=256))
    ids = engine.tokenizer.encode_chat(prompt)
    return device_answer(engine, ids, NUM_TOKENS, ignore_eos=True).token_ids


def test_tuned_and_untuned_q4_1_builds_give_identical_greedy_tokens(q4_1_package):
    untuned = build_cached_package("q4_1", tuned=False)
    for prompt in ("What is the capital of France?", "Write a short poem about the sea and the wind."):
        assert _greedy(q4_1_package, prompt) == _greedy(untuned, prompt)
