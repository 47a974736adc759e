"""The cloud server's asyncio shell (CloudServer + Connection) on loopback over the fake backend: no model.

Decode steps wait for permits from the test, so how far a request gets is the test's choice, not a race.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pdlink.cloud.config import CloudConfig
from pdlink.cloud.server import CloudServer
from pdlink.common.protocol import (
    PROTOCOL_VERSION, Accepted, Cancel, Done, Error, Hello, Ping, Pong, PrefillRequest, Rejected, Stop, Token,
    Welcome, decode_server, encode,
)

from .fake_backend import FakeBackend, FakeClock, continuation

PROMPT = [5, 6, 7, 8, 9]
TIMEOUT_S = 5.0


class GatedBackend(FakeBackend):
    """Every decode step waits for a permit (``allow``) until the gate is ``open``ed."""

    def __init__(self):
        super().__init__(FakeClock())
        self._permits = threading.Semaphore(0)
        self._open = False

    def allow(self, steps: int) -> None:
        self._permits.release(steps)

    def open(self) -> None:
        self._open = True
        self._permits.release()

    def decode(self, seq_ids, token_ids):
        if not self._open:
            self._permits.acquire(timeout=TIMEOUT_S)
        return super().decode(seq_ids, token_ids)


class Client:
    """Raw frames over a real websocket: the server sees exactly what a device would send."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, msg) -> None:
        await self.ws.send(msg if isinstance(msg, str) else encode(msg))

    async def recv(self):
        return decode_server(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))

    async def hello(self, model_id: str = "fake"):
        await self.send(Hello(protocol_version=PROTOCOL_VERSION, model_id=model_id, tokenizer_hash="fake-tokenizer"))
        return await self.recv()

    async def prefill(self, rid: str, k: int, prompt=PROMPT) -> Accepted | Rejected:
        await self.send(PrefillRequest(request_id=rid, max_leading_tokens=k, prompt_token_ids=list(prompt)))
        return await self.recv()

    async def first_token(self, rid: str, k: int) -> None:
        """Open a stream that stops after token 0: every later token waits for the backend's permits."""
        assert isinstance(await self.prefill(rid, k), Accepted)
        first = await self.recv()
        assert isinstance(first, Token) and first.request_id == rid and first.index == 0

    async def until_done(self, rid: str) -> tuple[list[Token], Done]:
        tokens = []
        while True:
            msg = await self.recv()
            if isinstance(msg, Done) and msg.request_id == rid:
                return tokens, msg
            assert isinstance(msg, Token) and msg.request_id == rid, msg
            tokens.append(msg)

    async def round_trip(self) -> None:
        """Returns once the server has acted on every frame sent before (it answers frames in order)."""
        await self.send(Ping(nonce=7))
        assert await self.recv() == Pong(nonce=7)


@contextlib.asynccontextmanager
async def serving(**cfg):
    backend = GatedBackend()
    server = CloudServer(CloudConfig(model="fake", model_id="fake", port=0, warm_up=False, max_prompt_tokens=256,
                                     max_leading_tokens=64, **cfg), backend=backend)
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve_forever(on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, TIMEOUT_S)
    try:
        async with connect(url, open_timeout=TIMEOUT_S) as ws:
            yield server, backend, Client(ws)
    finally:
        backend.open()
        server.request_shutdown()
        await asyncio.wait_for(task, 3 * TIMEOUT_S)


def on_server(hello: bool = True, **cfg):
    """Run an ``async def test(server, backend, client)`` against a fresh server, after ``hello`` by default,
    within a time limit."""
    def wrap(test):
        async def main():
            async with serving(**cfg) as (server, backend, client):
                if hello:
                    assert isinstance(await client.hello(), Welcome)
                await test(server, backend, client)

        def run():
            asyncio.run(asyncio.wait_for(main(), 4 * TIMEOUT_S))
        run.__name__ = test.__name__
        return run
    return wrap


async def wait_until(condition) -> None:
    for _ in range(int(TIMEOUT_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@on_server(hello=False)
async def test_hello_gets_a_welcome_with_the_servers_limits(server, backend, client):
    welcome = await client.hello()
    assert isinstance(welcome, Welcome) and welcome.model_id == "fake"
    assert welcome.tokenizer_hash == "fake-tokenizer" and welcome.limits.max_leading_tokens == 64
    assert server.health()["connections"] == 1


@on_server()
async def test_a_prefill_streams_the_greedy_tokens_then_done(server, backend, client):
    backend.open()
    accepted = await client.prefill("r1", k=5)
    assert isinstance(accepted, Accepted) and accepted.prompt_tokens == len(PROMPT)
    tokens, done = await client.until_done("r1")
    assert [t.index for t in tokens] == list(range(5))
    assert [t.token_id for t in tokens] == continuation(PROMPT, 5)
    assert "".join(t.text for t in tokens) == backend.tokenizer.decode(continuation(PROMPT, 5))
    assert done.reason == "max_leading_tokens" and done.tokens_sent == 5
    await wait_until(lambda: server.worker.stats().kv_sequences == 0)


@on_server()
async def test_stop_ends_the_stream_at_the_index(server, backend, client):
    await client.first_token("r1", k=20)
    await client.send(Stop(request_id="r1", after_index=2))
    await client.round_trip()
    backend.allow(10)
    tokens, done = await client.until_done("r1")
    assert [t.index for t in tokens] == [1, 2]
    assert done.reason == "stopped" and done.tokens_sent == 3 and done.stop_after_index == 2
    await wait_until(lambda: server.worker.stats().kv_sequences == 0)
    assert len(backend.decode_calls) == 2  # the worker computed nothing past the stop index


@on_server()
async def test_cancel_finishes_the_request_at_once(server, backend, client):
    await client.first_token("r1", k=20)
    await client.send(Cancel(request_id="r1"))
    tokens, done = await client.until_done("r1")
    assert tokens == [] and done.reason == "cancelled" and done.tokens_sent == 1
    assert server.worker.stats().requests_live == 0  # the scheduler let go before Done left
    backend.open()  # the step that was waiting ends, and the sequence is freed
    await wait_until(lambda: server.worker.stats().kv_sequences == 0)


@on_server()
async def test_malformed_frames_get_the_right_errors_and_the_connection_stays_open(server, backend, client):
    await client.send("{not json")
    error = await client.recv()
    assert isinstance(error, Error) and error.code == "malformed_json" and not error.fatal
    await client.send('{"type": "prefill", "request_id": "r1", "max_leading_tokens": "many"}')
    rejected = await client.recv()
    assert isinstance(rejected, Rejected) and rejected.reason == "invalid_request"
    await client.send(Stop(request_id="nobody", after_index=0))
    error = await client.recv()
    assert isinstance(error, Error) and error.code == "unknown_request" and error.request_id == "nobody"
    await client.round_trip()
    assert b'pdlink_cloud_protocol_errors_total{code="malformed_json"} 1.0' in server.metrics.render()


@on_server(hello=False)
async def test_a_first_frame_other_than_hello_closes_the_connection(server, backend, client):
    await client.send(Ping())
    error = await client.recv()
    assert isinstance(error, Error) and error.code == "handshake_required" and error.fatal
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(client.ws.recv(), TIMEOUT_S)
    assert closed.value.rcvd.code == 1008


@on_server()
async def test_a_disconnect_frees_the_request_and_its_sequence(server, backend, client):
    await client.first_token("r1", k=20)
    await client.ws.close()
    await wait_until(lambda: server.worker.stats().requests_live == 0 and server.health()["connections"] == 0)
    backend.open()
    await wait_until(lambda: server.worker.stats().kv_sequences == 0)
    assert backend.freed == [1]
    assert b'pdlink_cloud_requests_total{finish_reason="disconnected"} 1.0' in server.metrics.render()


@on_server(max_concurrent_requests=1)
async def test_a_request_over_the_servers_limit_is_rejected_as_overloaded(server, backend, client):
    await client.first_token("r1", k=20)
    rejected = await client.prefill("r2", k=4)
    assert isinstance(rejected, Rejected) and rejected.reason == "overloaded"
    assert rejected.retry_after_s == 1.0 and "limit of 1 requests" in rejected.message
