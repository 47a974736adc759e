"""KV export/import on the real model: a second backend instance continues a sequence it never prefilled,
with the KV carried by a real transport, and its greedy tokens equal the first instance's."""

from __future__ import annotations

import copy
import json

import msgspec
import numpy as np
import pytest

from pdlink.cloud.kv import KVSnapshot, Layout, open_receiver, open_sender
from tests.model.prompts import chat_prompts

pytestmark = pytest.mark.model

CONTINUE = 8


def greedy(backend, seq_id: int, token: int, n: int) -> list[int]:
    out = [token]
    for _ in range(n):
        out.append(int(np.argmax(backend.decode([seq_id], [out[-1]])[0])))
    return out


def hand_over(source, target, transport: str, layout: Layout):
    """Prompt A (long) and B (short) prefilled and decoded together on ``source``; B's KV goes to ``target``.
    Returns (B's continuation on source, on target)."""
    prompts = [source.tokenizer.encode_chat(p) for p in chat_prompts()[:2]]
    prompts.sort(key=len, reverse=True)  # B is the shorter one: a left-padded row of a batch cache
    seqs = [source.add_sequence() for _ in prompts]
    logits = source.prefill(dict(zip(seqs, prompts)))
    tokens = [int(np.argmax(logits[s])) for s in seqs]
    for _ in range(2):  # both decode as one batch before the export
        tokens = [int(t) for t in np.argmax(source.decode(seqs, tokens), axis=-1)]
    snap = source.export_kv(seqs[1])
    assert snap.header.token_ids[:len(prompts[1])] == list(prompts[1]) and snap.num_tokens == len(prompts[1]) + 2
    with open_receiver(transport) as receiver:
        open_sender(transport).send(receiver.address, "b", snap, layout, timeout=60).wait(timeout=60)
        got = receiver.wait("b", timeout=60)
    imported = target.import_kv(got)
    assert np.array_equal(target.export_kv(imported).data, snap.data)  # the exact bytes landed in the cache
    source.free_sequence(seqs[0])  # both sides now decode B alone: the same arithmetic
    here, there = greedy(source, seqs[1], tokens[1], CONTINUE), greedy(target, imported, tokens[1], CONTINUE)
    source.free_sequence(seqs[1])
    target.free_sequence(imported)
    return here, there


def test_package_backend_continues_an_imported_sequence_token_exact(f32_package):
    from pdlink.cloud.backend import load_backend

    a, b = (load_backend(str(f32_package), threads=2, max_sequences=4, context_window=512) for _ in range(2))
    here, there = hand_over(a, b, "shm", Layout.BLOCK)
    assert here == there
    foreign = KVSnapshot(msgspec.structs.replace(a_snapshot(a).header, model_id="other"), a_snapshot(a).data)
    with pytest.raises(ValueError, match="other"):
        b.import_kv(foreign)
    assert b.num_sequences == 0


def test_torch_backend_continues_an_imported_sequence_token_exact():
    from pdlink.cloud.backend import load_backend

    a = load_backend("smollm2-135m", threads=2, max_sequences=4, context_window=512)
    # A second instance with its own sequences and caches, sharing the read-only weights (loading the GGUF
    # twice would double the test's time): all KV state lives in _seqs/_batch.
    b = copy.copy(a)
    b._seqs, b._batch, b._next_id = {}, None, 100
    here, there = hand_over(a, b, "tcp", Layout.CONTIGUOUS)
    assert here == there
    snap = a_snapshot(a)
    short = KVSnapshot.build(model_id=snap.header.model_id, token_ids=snap.header.token_ids,
                             data=snap.data[:-1], page_size=16)  # one layer missing
    with pytest.raises(ValueError, match="does not fit"):
        b.import_kv(short)


def a_snapshot(backend):
    seq = backend.add_sequence()
    backend.prefill({seq: [1, 2, 3]})
    try:
        return backend.export_kv(seq)
    finally:
        backend.free_sequence(seq)


def test_a_package_built_before_kv_io_is_refused_with_recompile(f32_package, tmp_path):
    from pdlink.common.package import PackageError
    from pdlink.edge.engine import Engine, EngineConfig

    for item in f32_package.iterdir():
        if item.name != "manifest.json":
            (tmp_path / item.name).symlink_to(item)
    manifest = json.loads((f32_package / "manifest.json").read_text())
    del manifest["kv_cache"]["kv_io"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="recompile"):
        Engine(EngineConfig(package=str(tmp_path), num_threads=1))


def test_engine_import_spanning_several_prefill_chunks_gives_bitwise_equal_logits(f32_engine):
    engine = f32_engine
    ids = np.arange(1000, 1000 + engine.prefill_chunk_size + 88) % engine.model_config.vocab_size
    a = engine.add_sequence()
    b = None
    try:
        engine.prefill(a, ids)
        kv = engine.export_kv(a)
        own = np.dtype(engine.manifest.kv_cache["dtype"])  # float32 for an f32 package (its KV is the reference)
        assert kv.shape == (30, 2, ids.size, 3, 64) and kv.dtype == own  # the cache's own dtype
        b = engine.import_kv(kv)
        assert engine.num_computed_tokens(b) == ids.size
        assert np.array_equal(engine.export_kv(b), kv) and np.array_equal(engine.export_kv(a), kv)
        assert np.array_equal(engine.decode(a, 42), engine.decode(b, 42))
        with pytest.raises(ValueError, match="does not fit"):
            engine.import_kv(kv[:, :, :, :2])
        with pytest.raises(ValueError, match="not a float dtype"):
            engine.import_kv(kv.astype(np.int32))
        other = np.float16 if own == np.float32 else np.float32
        c = engine.import_kv(kv.astype(other))  # another float dtype is converted to the cache's
        try:
            assert np.array_equal(engine.export_kv(c), kv.astype(other).astype(own))
        finally:
            engine.remove_sequence(c)
    finally:
        for s in (a, b):
            if s is not None:
                engine.remove_sequence(s)
