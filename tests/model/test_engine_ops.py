"""Engine operations on the real model: chunking, appended tokens, batching, fork, limits."""

from __future__ import annotations

import numpy as np
import pytest

from pdlink.edge.engine import PromptTooLongError
from pdlink.edge.session import Session, SessionConfig
from tests.conftest import device_answer
from pdlink.common.tokenizer import StreamingDetokenizer

pytestmark = pytest.mark.model


@pytest.fixture
def engine(f32_engine):
    yield f32_engine
    for seq in f32_engine.sequences:
        f32_engine.remove_sequence(seq)


@pytest.fixture(scope="module")
def ids(f32_engine):
    return f32_engine.tokenizer.encode_chat("Tell me about the history of the bicycle in a few sentences.")


def _prefill(engine, tokens, chunk=None):
    seq = engine.add_sequence()
    logits = engine.prefill(seq, tokens, chunk_size=chunk)
    return seq, logits


def test_chunked_prefill_equals_one_shot(engine, ids):
    a, whole = _prefill(engine, ids)
    b, chunked = _prefill(engine, ids, chunk=7)
    assert engine.num_computed_tokens(a) == engine.num_computed_tokens(b) == len(ids)
    # Each chunk's attention output is rounded to the float16 pages' dtype before the chunks' states merge, so
    # chunked logits differ from one-shot ones by float16 rounding (~1e-2 on logits of magnitude ~20), no more.
    np.testing.assert_allclose(whole, chunked, atol=3e-2)
    assert int(whole.argmax()) == int(chunked.argmax())


def test_greedy_decode_inside_the_package_equals_the_argmax_of_the_logits(engine, ids):
    a, la = _prefill(engine, ids)
    b, _ = _prefill(engine, ids)
    ta = tb = int(la.argmax())
    for _ in range(8):
        ta, tb = int(engine.decode(a, ta).argmax()), engine.decode_greedy(b, tb)
        assert isinstance(tb, int) and ta == tb
    assert engine.num_computed_tokens(a) == engine.num_computed_tokens(b) == len(ids) + 8


def test_tokens_from_elsewhere_append_as_prefill(engine, ids):
    """Greedy tokens received from the cloud, appended as one prefill, give the same next token."""
    reply = device_answer(engine, ids, 12, ignore_eos=True).token_ids
    seq, _ = _prefill(engine, ids)
    logits = engine.prefill(seq, reply[:-1])
    assert engine.num_computed_tokens(seq) == len(ids) + len(reply) - 1
    assert int(logits.argmax()) == reply[-1]


def test_batch_decode_equals_single_decodes(engine, ids):
    other = engine.tokenizer.encode_chat("Name a prime number.")
    a, la = _prefill(engine, ids)
    b, lb = _prefill(engine, other)
    ta, tb = int(la.argmax()), int(lb.argmax())
    batched = engine.batch_decode([a, b], [ta, tb])
    engine.rollback(a, 1)
    engine.rollback(b, 1)
    np.testing.assert_allclose(batched[0], engine.decode(a, ta), atol=2e-3)
    np.testing.assert_allclose(batched[1], engine.decode(b, tb), atol=2e-3)


def test_batch_prefill_equals_single_prefills(engine, ids):
    other = engine.tokenizer.encode_chat("Name a prime number.")
    a, b = engine.add_sequence(), engine.add_sequence()
    out = engine.batch_prefill({a: ids, b: other})
    _, la = _prefill(engine, ids)
    np.testing.assert_allclose(out[a], la, atol=2e-3)
    assert engine.num_computed_tokens(b) == len(other)


def test_fork_shares_the_prefix(engine, ids):
    parent, logits = _prefill(engine, ids)
    child = engine.fork_sequence(parent)
    token = int(logits.argmax())
    np.testing.assert_allclose(engine.decode(parent, token), engine.decode(child, token), atol=2e-3)
    engine.remove_sequence(child)
    assert child not in engine.sequences
    with pytest.raises(KeyError):
        engine.decode(child, token)


def test_prompt_over_the_context_window_is_refused_and_loses_nothing(engine):
    seq = engine.add_sequence()
    engine.prefill(seq, [1, 2, 3])
    with pytest.raises(PromptTooLongError, match="context window"):
        engine.prefill(seq, [5] * engine.context_window)
    assert engine.num_computed_tokens(seq) == 3


def test_token_ids_outside_the_vocabulary_are_refused(engine):
    seq = engine.add_sequence()
    with pytest.raises(ValueError, match="token ids"):
        engine.prefill(seq, [1, engine.model_config.vocab_size])
    with pytest.raises(ValueError, match="at least one"):
        engine.prefill(seq, [])
    assert engine.num_computed_tokens(seq) == 0


def test_streaming_text_never_breaks_utf8(engine):
    tok = engine.tokenizer
    text = "Grüße aus Köln! 😀 Ça va? 東京"
    detok = StreamingDetokenizer(tok)
    pieces = [detok.add(t) for t in tok.encode(text)] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_strings_cut_the_text_and_the_stream(engine, ids):
    free = device_answer(engine, ids, 24, ignore_eos=True).text
    stop = free.split()[3]
    session = Session(SessionConfig(), engine=engine)
    try:
        streamed = "".join(t.text for t in session.generate(ids, mode="device", max_tokens=24, stop=(stop,)))
        result = session.last
    finally:
        session.close()
    streamed += result.tail_text
    assert result.finish_reason == "stop"
    assert stop not in result.text and free.startswith(result.text)
    assert streamed == result.text


def test_sampling_with_seed_is_reproducible(engine, ids):
    from pdlink.common.sampling import SamplingParams

    sampling = SamplingParams(temperature=0.8, top_p=0.9, seed=11)
    assert device_answer(engine, ids, 10, sampling=sampling).token_ids == \
        device_answer(engine, ids, 10, sampling=sampling).token_ids


def test_chat_reuses_the_cache_and_answers_like_a_fresh_prompt(engine):
    from pdlink.edge.chat import Conversation

    session = Session(SessionConfig(), engine=engine)
    chat = Conversation(session)
    list(chat.ask("What is the capital of France?", mode="device", max_tokens=16))
    list(chat.ask("And of Italy?", mode="device", max_tokens=16))
    second = chat.last
    chat.close()
    session.close()
    tok = engine.tokenizer
    fresh_ids = tok.encode(tok.apply_chat_template(chat.messages[:-1], add_generation_prompt=True))
    assert 0 < second.cached_prompt_tokens < len(fresh_ids) == second.prompt_tokens  # only the new turn was prefilled
    assert device_answer(engine, fresh_ids, 16).token_ids == second.token_ids


ENGINE_ALONE = """
import json, sys
from pdlink.edge.engine import Engine, EngineConfig
engine = Engine(EngineConfig(package=sys.argv[1], num_threads=1, context_window=64))
seq = engine.add_sequence()
token = int(engine.prefill(seq, engine.tokenizer.encode("The sky is")).argmax())
print(json.dumps({"token": engine.decode_greedy(seq, token), "modules": sorted(sys.modules)}))
"""


def test_an_engine_runs_on_tvm_ffi_and_the_runtime_library_without_the_tvm_python_package(q4_1_package):
    """``import tvm`` costs ~35 MiB of modules even with the runtime library alone; the engine needs none."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", ENGINE_ALONE, str(q4_1_package)], capture_output=True, text=True,
                          timeout=120, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(out["token"], int)
    assert "tvm_ffi" in out["modules"] and not [m for m in out["modules"] if m == "tvm" or m.startswith(("tvm.", "torch"))]
