"""The gateway over in-process prefill and decode instances on the fake backend (no model, no Ray): devices
speak protocol v1 to it as to one server; busy instances, dead instances and stops are handled."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from websockets.asyncio.client import connect

from pdlink.cloud.cluster.config import ClusterConfig
from pdlink.cloud.cluster.decode_instance import DecodeInstance
from pdlink.cloud.cluster.gateway import Gateway
from pdlink.cloud.cluster.prefill_instance import PrefillInstance
from pdlink.cloud.cluster.runtime import Runtime
from pdlink.cloud.config import CloudConfig
from pdlink.cloud.kv.snapshot import KVSnapshot
from pdlink.common.protocol import (
    PROTOCOL_VERSION, Accepted, Done, Hello, PrefillRequest, Rejected, Stop, Token, Welcome, decode_server, encode,
)

from .fake_backend import FakeBackend, FakeClock, FakeTokenizer, continuation

TIMEOUT_S = 10.0


class PausableBackend(FakeBackend):
    """Steps wait while ``paused`` is set (bounded), so a test can catch requests in flight."""

    def __init__(self):
        super().__init__(FakeClock(), max_sequences=8)
        self.running = threading.Event()
        self.running.set()

    def prefill(self, chunks):
        self.running.wait(TIMEOUT_S)
        return super().prefill(chunks)

    def decode(self, seq_ids, token_ids):
        self.running.wait(TIMEOUT_S)
        return super().decode(seq_ids, token_ids)


class KVBackend(PausableBackend):
    """Exports and imports KV as ``cloud/kv`` snapshots (the fake model's "KV" is its token list);
    ``corrupt`` damages every exported payload after its checksum was taken."""

    supports_kv_transfer = True
    corrupt = False

    def export_kv(self, seq_id):
        tokens = self.seqs[seq_id]
        data = np.asarray(tokens, dtype=np.float32).reshape(1, 1, len(tokens), 1, 1).repeat(2, axis=1)
        snapshot = KVSnapshot.build(model_id="fake", token_ids=tokens, data=data, page_size=16)
        if self.corrupt:
            snapshot.data.reshape(-1)[0] += 1.0
        return snapshot

    def import_kv(self, snapshot):
        seq_id = self.add_sequence()
        self.seqs[seq_id] = list(snapshot.header.token_ids)
        self.imported = getattr(self, "imported", 0) + 1
        return seq_id


class Rig:
    """A gateway on a free port over ``prefill`` + ``decode`` in-process instances with their own backends."""

    def __init__(self, prefill=2, decode=2, slots=2, budget_s=5.0, backend=PausableBackend, **cluster):
        self.backends: dict[str, PausableBackend] = {}
        self.backend_cls = backend
        self.cluster = ClusterConfig(cluster="inproc", prefill=prefill, decode=decode, prefill_slots=slots,
                                     decode_slots=8, **cluster)
        self.cfg = CloudConfig(model="fake", model_id="fake", port=0, warm_up=False, ttft_budget_s=budget_s,
                               max_prompt_tokens=256, max_leading_tokens=64)
        self.gateway = Gateway(self.cfg, self.cluster, Runtime(self.cluster, self._make), tokenizer=FakeTokenizer())

    def _make(self, spec):
        backend = self.backends[spec.name] = self.backend_cls()
        return (PrefillInstance if spec.role == "prefill" else DecodeInstance)(spec, backend=backend)

    async def __aenter__(self):
        ready = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self.gateway.serve_forever(on_ready=ready.set_result))
        self.url = await asyncio.wait_for(ready, TIMEOUT_S)
        return self

    async def __aexit__(self, *exc):
        self.gateway.request_shutdown()
        await asyncio.wait_for(self.task, TIMEOUT_S)

    async def client(self):
        ws = await connect(self.url, open_timeout=TIMEOUT_S)
        await ws.send(encode(Hello(protocol_version=PROTOCOL_VERSION, model_id="fake", tokenizer_hash="fake-tokenizer")))
        assert isinstance(decode_server(await asyncio.wait_for(ws.recv(), TIMEOUT_S)), Welcome)
        return Device(ws)

    def handle(self, name):
        return self.gateway.handles[name]


class Device:
    """One connection; frames of other requests wait in a buffer until asked for."""

    def __init__(self, ws):
        self.ws, self.buffered = ws, []

    async def next(self, rid):
        for i, msg in enumerate(self.buffered):
            if msg.request_id == rid:
                return self.buffered.pop(i)
        while True:
            msg = decode_server(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
            if msg.request_id == rid:
                return msg
            self.buffered.append(msg)

    async def ask(self, rid, prompt, k):
        await self.ws.send(encode(PrefillRequest(request_id=rid, prompt_token_ids=list(prompt), max_leading_tokens=k)))
        return await self.next(rid)

    async def stream(self, rid):
        tokens = []
        while True:
            msg = await self.next(rid)
            if isinstance(msg, Token):
                tokens.append(msg)
            elif isinstance(msg, Done):
                return tokens, msg

    async def close(self):
        await self.ws.close()


def prompt(i: int) -> list[int]:
    return [5 + i, 6, 7 + 2 * i, 8, 9]


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def test_concurrent_devices_get_the_single_server_tokens_through_prefill_and_decode_pools():
    async def go():
        async with Rig() as rig:
            async def one(i):
                ws = await rig.client()
                assert isinstance(await ws.ask(f"r{i}", prompt(i), 6), Accepted)
                tokens, done = await ws.stream(f"r{i}")
                await ws.close()
                return tokens, done

            results = await asyncio.gather(*(one(i) for i in range(8)))
            for i, (tokens, done) in enumerate(results):
                assert [t.token_id for t in tokens] == continuation(prompt(i), 6)
                assert [t.index for t in tokens] == list(range(6)) and done.reason == "max_leading_tokens"
            health = rig.gateway.health()
            assert health["requests_in_flight"] == 0
            assert {n for n, s in health["instances"].items() if s["role"] == "decode"} == \
                {"default-decode-0", "default-decode-1"}
            text = rig.gateway.metrics.render().decode()
            assert 'pdlink_cluster_offers_total{group="default",instance="default-prefill-0",outcome="accepted"}' in text
            assert 'pdlink_cluster_kv_handoffs_total{group="default",path="reprefill"}' in text

    run(go())


def test_the_queue_report_baseline_queues_on_the_instances_and_serves_every_request():
    async def go():
        async with Rig(prefill=2, decode=1, slots=1, router="queue_report", baseline_queue=8,
                       report_interval_s=0.05) as rig:
            ws = await rig.client()
            for i in range(6):  # more than the slots: the instances queue them, nothing is rejected
                assert isinstance(await ws.ask(f"q{i}", prompt(i), 3), Accepted)
            for i in range(6):
                tokens, done = await ws.stream(f"q{i}")
                assert [t.token_id for t in tokens] == continuation(prompt(i), 3)
            assert rig.gateway.health()["router"] == "queue_report"
            assert [s.max_queue for s in rig.gateway.specs if s.role == "prefill"] == [8, 8]
            await ws.close()

    run(go())


def test_busy_instances_reject_and_an_exhausted_budget_answers_rejected():
    async def go():
        async with Rig(prefill=2, decode=1, slots=1, budget_s=0.3) as rig:
            for name in ("default-prefill-0", "default-prefill-1"):
                rig.backends[name].running.clear()  # both hold their one slot
            ws = await rig.client()
            assert isinstance(await ws.ask("a", prompt(0), 4), Accepted)
            assert isinstance(await ws.ask("b", prompt(1), 4), Accepted)  # the first was busy: the next took it
            refused = await ws.ask("c", prompt(2), 4)
            assert isinstance(refused, Rejected) and refused.reason == "overloaded" and "TTFT budget" in refused.message
            for backend in rig.backends.values():
                backend.running.set()
            for rid, i in (("a", 0), ("b", 1)):
                tokens, done = await ws.stream(rid)
                assert [t.token_id for t in tokens] == continuation(prompt(i), 4)
            busy = rig.gateway.metrics.render().decode()
            assert 'outcome="busy"' in busy and 'pdlink_cluster_rejected_total{group="default"} 1.0' in busy
            await ws.close()

    run(go())


def test_a_dead_prefill_instance_loses_no_request():
    async def go():
        async with Rig(prefill=2, decode=1, slots=4) as rig:
            rig.backends["default-prefill-0"].running.clear()
            ws = await rig.client()
            for i in range(4):
                assert isinstance(await ws.ask(f"p{i}", prompt(i), 5), Accepted)
            held = rig.gateway.pools.by_name["default-prefill-0"].open
            assert held >= 1  # requests sit on the paused instance
            await rig.handle("default-prefill-0").kill()
            rig.backends["default-prefill-0"].running.set()
            for i in range(4):
                tokens, done = await ws.stream(f"p{i}")
                assert [t.token_id for t in tokens] == continuation(prompt(i), 5) and done.reason == "max_leading_tokens"
            assert rig.gateway.health()["instances"]["default-prefill-0"]["alive"] is False
            await ws.close()

    run(go())


def test_a_dead_decode_instance_hands_its_requests_to_another_which_reprefills():
    async def go():
        async with Rig(prefill=1, decode=2, slots=4) as rig:
            decoders = ("default-decode-0", "default-decode-1")
            for name in decoders:
                rig.backends[name].running.clear()
            ws = await rig.client()
            assert isinstance(await ws.ask("d", prompt(3), 12), Accepted)
            first = [await ws.next("d")]  # token 0 comes from the prefill instance
            for _ in range(200):
                if any(rig.gateway.pools.by_name[n].open for n in decoders):
                    break
                await asyncio.sleep(0.01)
            holder = next(n for n in decoders if rig.gateway.pools.by_name[n].open)
            await rig.handle(holder).kill()  # dies while the request is arriving
            for name in decoders:
                rig.backends[name].running.set()
            tokens, done = await ws.stream("d")
            tokens = [t for t in first if isinstance(t, Token)] + tokens
            assert [t.token_id for t in tokens] == continuation(prompt(3), 12)
            assert [t.index for t in tokens] == list(range(12)) and done.reason == "max_leading_tokens"
            await ws.close()

    run(go())


def test_stop_ends_the_stream_at_its_index_and_frees_every_instance():
    async def go():
        async with Rig(prefill=1, decode=1) as rig:
            ws = await rig.client()
            assert isinstance(await ws.ask("s", prompt(1), 40), Accepted)
            await ws.ws.send(encode(Stop(request_id="s", after_index=3)))
            tokens, done = await ws.stream("s")
            assert [t.index for t in tokens] == [0, 1, 2, 3] and done.reason == "stopped"
            assert [t.token_id for t in tokens] == continuation(prompt(1), 4)
            await ws.close()
            for _ in range(100):
                await rig.gateway._refresh_stats()
                if rig.gateway.health()["kv_sequences"] == 0:
                    break
                await asyncio.sleep(0.02)
            health = rig.gateway.health()
            assert health["kv_sequences"] == 0 and health["requests_in_flight"] == 0

    run(go())


@pytest.mark.parametrize("corrupt, path", [(False, "kv"), (True, "failed")])
def test_the_prompt_kv_moves_to_the_decode_instance_and_a_bad_one_is_re_prefilled(corrupt, path):
    KVBackend.corrupt = corrupt

    async def go():
        async with Rig(prefill=1, decode=1, backend=KVBackend) as rig:
            ws = await rig.client()
            for i in range(3):
                assert isinstance(await ws.ask(f"k{i}", prompt(i), 7), Accepted)
            for i in range(3):
                tokens, done = await ws.stream(f"k{i}")
                assert [t.token_id for t in tokens] == continuation(prompt(i), 7)
            text = rig.gateway.metrics.render().decode()
            assert f'pdlink_cluster_kv_handoffs_total{{group="default",path="{path}"}} 3.0' in text
            decoder = rig.backends["default-decode-0"]
            assert getattr(decoder, "imported", 0) == (0 if corrupt else 3)
            await ws.close()

    try:
        run(go())
    finally:
        KVBackend.corrupt = False


@pytest.mark.parametrize("field, value, word", [
    ("cluster", "k8s://x", "ray://"), ("prefill", 0, "at least 1"), ("router", "random", "on_demand"),
    ("groups", ("x:colour=red",), "not app="), ("instance_cpus", 0, "instance-cpus"),
])
def test_cluster_config_refuses_bad_settings(field, value, word):
    with pytest.raises(ValueError, match=word):
        ClusterConfig(**{field: value})
