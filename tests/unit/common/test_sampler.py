import numpy as np
import pytest

from pdlink.common.sampling import Sampler, SamplingParams


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"temperature": float("nan")}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}])
def test_invalid_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert Sampler(SamplingParams()).sample(logits) == 1


def test_seed_reproduces_and_top_k_one_is_greedy():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    params = SamplingParams(temperature=1.0, seed=7)
    a = [Sampler(params).sample(logits) for _ in range(3)]
    assert len(set(a)) == 1
    s = Sampler(params)
    draws = {s.sample(logits) for _ in range(50)}
    assert len(draws) > 5
    assert Sampler(SamplingParams(temperature=1.0, top_k=1, seed=3)).sample(logits) == int(np.argmax(logits))


def test_top_p_keeps_only_the_nucleus():
    logits = np.array([10.0, 9.0, 0.0, 0.0, 0.0], np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=1))
    assert {s.sample(logits) for _ in range(30)} == {0}
