"""The shared engine's batching policy (pure core) and its thread shell over a fake engine."""

from __future__ import annotations

import threading

import pytest

from pdlink.assistant.batch_core import DECODE, PREFILL, BatchCore, Work
from pdlink.assistant.batch_engine import BatchingEngine, EngineClosedError
from tests.unit.assistant.fake_engine import BatchFakeEngine
from tests.unit.cloud.fake_backend import continuation


def test_waiting_decodes_run_as_one_batch_oldest_first_up_to_max_batch():
    core = BatchCore(max_batch=3)
    for seq in (5, 6, 7, 8):
        core.submit(Work(DECODE, seq, (seq,)))
    step = core.next_step()
    assert step.kind == DECODE and [w.seq for w in step.works] == [5, 6, 7]
    assert [w.seq for w in core.next_step().works] == [8]
    assert core.next_step() is None
    assert core.stats.batch_sizes == {3: 1, 1: 1} and core.stats.decode_rows == 4


def test_prefills_run_alone_and_alternate_with_decode_batches():
    core = BatchCore(max_batch=8)
    core.submit(Work(PREFILL, 1, (1, 2, 3)))
    core.submit(Work(PREFILL, 2, (4, 5)))
    core.submit(Work(DECODE, 3, (9,)))
    core.submit(Work(DECODE, 4, (9,)))
    kinds = []
    while (step := core.next_step()) is not None:
        kinds.append((step.kind, [w.seq for w in step.works]))
    assert kinds == [(DECODE, [3, 4]), (PREFILL, [1]), (PREFILL, [2])]
    core.submit(Work(DECODE, 3, (9,)))
    core.submit(Work(PREFILL, 1, (7,)))
    assert core.next_step().kind == DECODE  # the last step was a prefill and decodes wait: their turn
    assert core.next_step().kind == PREFILL


def test_bad_work_and_a_second_call_of_one_sequence_are_refused():
    core = BatchCore()
    with pytest.raises(ValueError, match="exactly one token"):
        Work(DECODE, 1, (1, 2))
    with pytest.raises(ValueError, match="kind"):
        Work("verify", 1, (1,))
    with pytest.raises(ValueError, match="max_batch"):
        BatchCore(max_batch=0)
    core.submit(Work(DECODE, 1, (1,)))
    with pytest.raises(ValueError, match="already has a call waiting"):
        core.submit(Work(PREFILL, 1, (1,)))
    assert [w.seq for w in core.drop(1)] == [1] and core.waiting == 0


def test_concurrent_decodes_of_several_threads_meet_in_one_batch_and_stay_correct():
    fake = BatchFakeEngine()
    gate = fake.gate = threading.Event()  # holds the first decode step until the other threads wait behind it
    engine = BatchingEngine(fake, max_batch=8)
    prompts = {i: [i + 1] * (3 + i) for i in range(4)}
    seqs = {i: engine.add_sequence() for i in prompts}
    answers: dict[int, list[int]] = {}
    prefilled = threading.Barrier(len(prompts), timeout=20)

    def run(i):
        logits = engine.prefill(seqs[i], prompts[i])
        prefilled.wait()  # the held decode step must not hold up a prefill
        out = [int(logits.argmax())]
        for _ in range(5):  # greedy decodes (the session's path for temperature 0) batch like the others
            out.append(engine.decode_greedy(seqs[i], out[-1]) if i % 2 else int(engine.decode(seqs[i], out[-1]).argmax()))
        answers[i] = out

    threads = [threading.Thread(target=run, args=(i,)) for i in prompts]
    for t in threads:
        t.start()
    for _ in range(1000):  # bounded: every thread's first decode is in the held step or waits behind it
        stats = engine.core.stats
        if stats.decode_steps == 1 and stats.decode_rows + engine.core.waiting_decodes == len(prompts):
            break
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(20)
    engine.close()
    assert answers == {i: continuation(prompts[i], 6) for i in prompts}
    assert fake.batches[1] >= len(prompts) - fake.batches[0], fake.batches  # the waiting decodes ran as one batch
    assert sum(fake.batches) == 5 * len(prompts)  # every decode, greedy or not, ran in a batch on the model thread


def test_calls_after_close_fail_with_a_clear_error():
    engine = BatchingEngine(BatchFakeEngine())
    seq = engine.add_sequence()
    engine.close()
    with pytest.raises(EngineClosedError, match="shutting down"):
        engine.decode(seq, 1)
