import numpy as np
import pytest

from pdlink.cloud.kv import KVSnapshot, open_receiver, open_sender
from pdlink.cloud.kv.landing import land_sequence
from tests.unit.cloud.fake_backend import FakeBackend, FakeClock, continuation
from tests.unit.cloud.kv.kv_fake_backend import KVFakeBackend

PROMPT = [5, 9, 2, 44, 7, 1, 3]


def prefilled(backend):
    seq = backend.add_sequence()
    backend.prefill({seq: PROMPT})
    return seq


def test_an_intact_transfer_is_imported_and_decodes_like_the_source():
    source, target = KVFakeBackend(FakeClock()), KVFakeBackend(FakeClock())
    with open_receiver("tcp") as receiver:
        open_sender("tcp").send(receiver.address, "r1", source.export_kv(prefilled(source)), "block").wait(10)
        landing = land_sequence(target, receiver, "r1", PROMPT, timeout=10)
    assert landing.source == "transfer" and landing.error is None
    assert target.prefill_calls == []  # nothing recomputed
    logits = target.decode([landing.seq_id], [continuation(PROMPT, 1)[0]])
    assert int(np.argmax(logits[0])) == continuation(PROMPT, 2)[1]


def test_a_corrupted_transfer_falls_back_to_reprefill():
    source, target = KVFakeBackend(FakeClock()), KVFakeBackend(FakeClock())
    snap = source.export_kv(prefilled(source))
    bad = KVSnapshot(snap.header, snap.data.copy())
    bad.data[0, 1, 2] += 1
    with open_receiver("shm") as receiver:
        open_sender("shm").send(receiver.address, "r2", bad, timeout=10)
        landing = land_sequence(target, receiver, "r2", PROMPT, timeout=10)
    assert landing.source == "reprefill" and "checksum mismatch" in landing.error
    assert target.seqs[landing.seq_id] == PROMPT and target.prefill_calls == [{landing.seq_id: len(PROMPT)}]


@pytest.mark.parametrize("case", ["timeout", "other tokens", "backend without import"])
def test_other_failures_fall_back_to_reprefill(case):
    source = KVFakeBackend(FakeClock())
    target = FakeBackend(FakeClock()) if case == "backend without import" else KVFakeBackend(FakeClock())
    with open_receiver("tcp") as receiver:
        if case != "timeout":
            open_sender("tcp").send(receiver.address, "r3", source.export_kv(prefilled(source)), timeout=10).wait(10)
        expected = PROMPT if case != "other tokens" else PROMPT + [8]
        landing = land_sequence(target, receiver, "r3", expected, timeout=0.2 if case == "timeout" else 10)
    assert landing.source == "reprefill" and target.seqs[landing.seq_id] == expected
    assert {"timeout": "TimeoutError", "other tokens": "other tokens",
            "backend without import": "cannot export or import"}[case] in landing.error


def test_a_full_backend_raises_and_empty_tokens_are_refused():
    from pdlink.cloud.backend import BackendError

    target = KVFakeBackend(FakeClock(), max_sequences=1)
    target.add_sequence()
    with open_receiver("tcp") as receiver:
        with pytest.raises(BackendError):
            land_sequence(target, receiver, "r4", PROMPT, timeout=0.05)
        with pytest.raises(ValueError, match="empty"):
            land_sequence(target, receiver, "r5", [], timeout=0.05)
