"""The cloud prefill server end to end: the real ``pdlink cloud serve`` on loopback with SmolLM2 on torch.

One server serves the whole module; every test leaves it idle again (checked through /healthz).
Every wait is bounded. The reference tokens are transformers' own greedy continuation.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
import websockets

from pdlink.common.client import CloudClient, CloudError
from pdlink.common.protocol import (
    PROTOCOL_VERSION, Accepted, Cancel, Done, Error, Hello, Ping, Pong, PrefillRequest, Rejected, Stop, Token,
    Welcome, decode_server, encode,
)
from pdlink.cloud.server_process import ServerProcess
from tests.model.reference import hf_greedy

pytestmark = pytest.mark.e2e

# The reference model runs in this process beside the server: sleeping OpenMP waiters keep torch from
# crawling when another process holds a core (it must be set before torch loads; see docs/cloud.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TOKEN = "e2e-secret-token"
MAX_PROMPT, MAX_K, PER_CONN, MAX_LIVE, MAX_BYTES = 1024, 32, 4, 24, 65536
QUESTIONS = [
    "What is the capital of France?", "Name three primary colors.", "Why is the sky blue?",
    "Write a haiku about autumn.", "What is 12 times 12?", "Give me a synonym for happy.",
    "What does a CPU do?", "Translate 'good morning' into Spanish.", "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?", "Describe a cat in one sentence.", "What is photosynthesis?",
    "List two uses of a hammer.", "What is the largest planet?", "How many days are in a week?",
    "Suggest a name for a pet dog.",
]


def arun(coro, timeout_s: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cloud")
    (folder / "token").write_text(TOKEN + "\n")
    proc = ServerProcess(
        "--model", "smollm2-135m", "--threads", "2", "--auth-token-file", str(folder / "token"),
        "--max-prompt-tokens", str(MAX_PROMPT), "--max-leading-tokens", str(MAX_K),
        "--max-concurrent-requests", str(MAX_LIVE), "--max-requests-per-connection", str(PER_CONN),
        "--max-message-bytes", str(MAX_BYTES), "--ttft-budget-s", "20", "--step-token-budget", "256",
        "--prefill-chunk-tokens", "128", "--max-batch-sequences", "24", "--handshake-timeout-s", "3",
        log_path=folder / "server.log")
    proc.token_file = folder / "token"
    try:
        proc.wait_ready(timeout_s=240)
        proc.tokenizer_hash = proc.health()["tokenizer_hash"]
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ref(hf_reference):
    """``ref.ids(question)`` (chat template, HF tokenizer) and ``ref.greedy(ids, n)`` (memoized)."""
    model, tok = hf_reference
    memo = {}

    class Ref:
        vocab = model.config.vocab_size

        @staticmethod
        def ids(question: str) -> list[int]:
            return list(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                return_dict=True)["input_ids"])

        @staticmethod
        def text_ids(n: int) -> list[int]:
            from pydoc_data.topics import topics

            return list(tok(topics["execmodel"] * 4, add_special_tokens=False)["input_ids"][:n])

        @staticmethod
        def greedy(ids: list[int], n: int) -> list[int]:
            key = (tuple(ids), n)
            if key not in memo:
                memo[key] = hf_greedy(model, ids, n)
            return memo[key]

    return Ref


@pytest.fixture(scope="module")
def tokenizer_hash():
    from pdlink.cloud.torch_backend import checkpoint_tokenizer
    from pdlink.compile.checkpoint import open_checkpoint

    return checkpoint_tokenizer(open_checkpoint("smollm2-135m")).hash


def wait_idle(server: ServerProcess, timeout_s: float = 30.0) -> dict:
    """Poll /healthz until no request is live and no KV sequence is held."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = server.health()
        if health["requests_in_flight"] == 0 and health["kv_sequences"] == 0 and health["queue_depth"] == 0:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"server still busy after {timeout_s} s: {health}")
        time.sleep(0.05)


class Raw:
    """A bare websocket speaking protocol frames, to see exactly what the server sends."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, server: ServerProcess, hello: bool = True, **fields) -> "Raw":
        # max_queue=None: a test that reads one connection while others stream keeps answering their pings
        ws = await websockets.asyncio.client.connect(server.url, open_timeout=10, max_size=None, compression=None,
                                                     max_queue=None)
        raw = cls(ws)
        if hello:
            base = dict(protocol_version=PROTOCOL_VERSION, model_id="smollm2-135m",
                        tokenizer_hash=server.tokenizer_hash, auth_token=TOKEN)
            await raw.send(Hello(**{**base, **fields}))
            assert isinstance(await raw.recv(), Welcome)
        return raw

    async def send(self, msg) -> None:
        await self.ws.send(msg if isinstance(msg, (str, bytes)) else encode(msg))

    async def recv(self, timeout_s: float = 60.0):
        return decode_server(await asyncio.wait_for(self.ws.recv(), timeout_s))

    async def until(self, predicate, timeout_s: float = 60.0) -> list:
        seen = []
        while not seen or not predicate(seen[-1]):
            seen.append(await self.recv(timeout_s))
        return seen

    async def alive(self) -> bool:
        await self.send(Ping(nonce=7))
        return await self.recv(10) == Pong(nonce=7)

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), 10)


async def connect(server, tokenizer_hash: str | None = None, **kw) -> CloudClient:
    return await CloudClient.connect(server.url, auth_token=TOKEN, event_timeout_s=90,
                                     tokenizer_hash=server.tokenizer_hash if tokenizer_hash is None else tokenizer_hash,
                                     **kw)


def prefill(rid: str, ids: list[int], k: int, **kw) -> PrefillRequest:
    return PrefillRequest(request_id=rid, prompt_token_ids=ids, max_leading_tokens=k, **kw)


# ---------------------------------------------------------------------------------------------- basics


def test_healthz_and_metrics_answer_on_the_websocket_port(server, tokenizer_hash):
    health = server.health()
    assert health["status"] == "ok" and health["model_id"] == "smollm2-135m" and health["backend"] == "torch"
    assert health["tokenizer_hash"] == tokenizer_hash  # the torch side hashes the tokenizer like a package
    status, body = server.http("/metrics")
    assert status == 200
    for name in ("pdlink_cloud_queue_depth", "pdlink_cloud_requests_in_flight", "pdlink_cloud_ttft_seconds_bucket",
                 "pdlink_cloud_busy_seconds_total", "pdlink_cloud_tokens_streamed_total",
                 'pdlink_cloud_rejections_total{reason="overloaded"}', "pdlink_cloud_requests_total"):
        assert name in body, name
    assert server.http("/nothing-here")[0] == 404


def test_leading_tokens_equal_transformers_greedy(server, ref, tokenizer_hash):
    ids = ref.ids("Explain in two sentences why the sky is blue.")

    async def go():
        async with await connect(server, tokenizer_hash) as client:
            assert client.tokenizer_match
            return await (await client.prefill(prompt_token_ids=ids, max_leading_tokens=16)).collect()

    stream = arun(go())
    assert [t.token_id for t in stream.tokens] == ref.greedy(ids, 16)
    assert stream.accepted.prompt_tokens == len(ids) and stream.accepted.estimated_ttft_s > 0
    assert stream.done.reason == "max_leading_tokens" and stream.done.tokens_sent == 16
    assert stream.done.cloud_busy_s > 0
    assert [t.index for t in stream.tokens] == list(range(16))
    wait_idle(server)


def test_stop_after_j_sends_nothing_past_j_and_frees_the_request(server, ref):
    ids = ref.ids("Write a long story about a dragon who learns to fly.")
    stopped = server.metric("pdlink_cloud_requests_total", finish_reason="stopped")

    async def go():
        raw = await Raw.open(server)
        await raw.send(prefill("s1", ids, MAX_K))
        await raw.send(Stop(request_id="s1", after_index=4))  # ahead of the stream: tokens 0..4 still owed
        frames = await raw.until(lambda m: isinstance(m, Done))
        await raw.close()
        return frames

    frames = arun(go())
    tokens = [m for m in frames if isinstance(m, Token)]
    assert [t.index for t in tokens] == [0, 1, 2, 3, 4]
    assert [t.token_id for t in tokens] == ref.greedy(ids, 5)
    assert frames[-1].reason == "stopped" and frames[-1].tokens_sent == 5
    wait_idle(server)
    assert server.metric("pdlink_cloud_requests_total", finish_reason="stopped") == stopped + 1


def test_stop_behind_the_stream_ends_it_at_once(server, ref):
    ids = ref.ids("Count from one to one hundred.")

    async def go():
        async with await connect(server) as client:
            stream = await client.prefill(prompt_token_ids=ids, max_leading_tokens=MAX_K)
            async for event in stream:
                if isinstance(event, Token) and event.index == 2:
                    await stream.stop(after_index=1)
            return stream

    stream = arun(go())
    assert stream.done.reason == "stopped" and stream.done.tokens_sent < MAX_K
    assert [t.index for t in stream.tokens] == [0, 1, 2]  # the client drops anything past its stop index
    wait_idle(server)


def test_disconnect_mid_prefill_frees_the_slot(server, ref):
    ids = ref.text_ids(MAX_PROMPT - 8)  # ~8 prefill steps of 128 tokens
    gone = server.metric("pdlink_cloud_requests_total", finish_reason="disconnected")

    async def go():
        raw = await Raw.open(server)
        await raw.send(prefill("long", ids, 4))
        assert isinstance(await raw.recv(), Accepted)
        await asyncio.sleep(0.3)
        raw.ws.transport.abort()  # no close handshake: the device just vanishes

    arun(go())
    wait_idle(server, timeout_s=20)
    assert server.metric("pdlink_cloud_requests_total", finish_reason="disconnected") == gone + 1


def test_sixteen_concurrent_clients_all_get_greedy_tokens(server, ref, tokenizer_hash):
    prompts = [ref.ids(q) for q in QUESTIONS]

    async def one(ids):
        async with await connect(server, tokenizer_hash) as client:
            return await (await client.prefill(prompt_token_ids=ids, max_leading_tokens=8)).collect()

    async def go():
        return await asyncio.gather(*(one(ids) for ids in prompts))

    streams = arun(go(), timeout_s=180)
    for ids, stream in zip(prompts, streams):
        assert stream.done.reason == "max_leading_tokens"
        assert [t.token_id for t in stream.tokens] == ref.greedy(ids, 8)
    wait_idle(server)


def test_chat_messages_and_the_cli_generate_the_greedy_answer(server, ref, tmp_path):
    question = "What is the capital of France?"
    ids = ref.ids(question)
    expected = ref.greedy(ids, 24)
    expected = expected[:expected.index(2)] if 2 in expected else expected  # the answer ends at <|im_end|>
    (tmp_path / "prompt.txt").write_text(question)
    cmd = [sys.executable, "-m", "pdlink", "generate", "--mode", "cloud", "--cloud", server.url, "--auth-token-file",
           str(server.token_file), "--prompt-file", str(tmp_path / "prompt.txt"), "--max-tokens", "24",
           "--temperature", "0", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["mode"] == "cloud" and result["token_ids"] == expected and result["finish_reason"] == "stop"
    assert result["prompt_tokens"] == len(ids) and "Paris" in result["text"] and result["ttft_s"] > 0
    probe = subprocess.run([sys.executable, "-m", "pdlink", "cloud", "probe", "--url", server.url,
                            "--auth-token-file", str(server.token_file), "--prompt", question, "--max-tokens", "4"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and "TTFT" in probe.stdout and "handshake" in probe.stdout, probe.stdout
    wait_idle(server)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_frames_get_clear_errors_and_the_connection_survives(server, ref):
    ids = ref.ids("Hello!")

    async def go():
        raw = await Raw.open(server)
        answers = {}
        await raw.send('{"type": "prefill", "request_id": ')  # malformed JSON
        answers["malformed"] = await raw.recv()
        await raw.send('{"type": "teleport", "request_id": "x"}')
        answers["unknown_type"] = await raw.recv()
        await raw.send('{"type":"prefill","request_id":"t1","max_leading_tokens":"many","prompt_token_ids":[1]}')
        answers["wrong_type"] = await raw.recv()
        await raw.send('{"type":"stop","request_id":"t1","after_index":"x"}')
        answers["wrong_type_stop"] = await raw.recv()
        # a SamplingParams with a negative temperature cannot be built: the frame is written by hand
        await raw.send(json.dumps({"type": "prefill", "request_id": "t2", "max_leading_tokens": 4,
                                   "prompt_token_ids": ids, "sampling": {"temperature": -1.0}}))
        answers["sampling"] = await raw.recv()
        await raw.send('{"type":"prefill","request_id":"t3","max_leading_tokens":2,"prompt_token_ids":[1],'
                       '"sampling":{"top_p":0}}')
        answers["top_p"] = await raw.recv()
        await raw.send(prefill("t4", ids + [ref.vocab], 4))
        answers["vocab"] = await raw.recv()
        await raw.send(prefill("t5", ref.text_ids(MAX_PROMPT + 1), 4))
        answers["too_long"] = await raw.recv()
        await raw.send(PrefillRequest(request_id="t6", prompt_text="word " * 3000, max_leading_tokens=2))
        answers["text_too_long"] = await raw.recv()
        await raw.send(prefill("t7", ids, MAX_K + 1))
        answers["k"] = await raw.recv()
        await raw.send(Stop(request_id="never", after_index=0))
        answers["unknown_request"] = await raw.recv()
        await raw.send(Hello(protocol_version=1, model_id="smollm2-135m", tokenizer_hash=""))
        answers["second_hello"] = await raw.recv()
        await raw.send(encode(PrefillRequest(request_id="t8", prompt_text="x" * (MAX_BYTES + 100),
                                             max_leading_tokens=1)))
        answers["oversized"] = await raw.recv()
        await raw.send(b"\xff\xfe not utf-8")
        answers["binary"] = await raw.recv()
        assert await raw.alive()
        await raw.close()
        return answers

    async def good():  # a well-behaved client on its own connection, served meanwhile
        async with await connect(server) as client:
            return await (await client.prefill(prompt_token_ids=ids, max_leading_tokens=6)).collect()

    async def both():
        return await asyncio.gather(go(), good())

    a, stream = arun(both())
    assert [t.token_id for t in stream.tokens] == ref.greedy(ids, 6)
    expect_error = {"malformed": "malformed_json", "unknown_type": "unknown_type", "wrong_type_stop": "bad_field",
                    "unknown_request": "unknown_request", "second_hello": "unexpected_message",
                    "oversized": "oversized", "binary": "malformed_json"}
    for name, code in expect_error.items():
        assert isinstance(a[name], Error) and a[name].code == code and not a[name].fatal, (name, a[name])
        assert a[name].message
    expect_reject = {"wrong_type": ("invalid_request", "max_leading_tokens"), "sampling": ("invalid_request", "temp"),
                     "top_p": ("invalid_request", "top_p"), "vocab": ("invalid_request", f"[0, {ref.vocab})"),
                     "too_long": ("prompt_too_long", str(MAX_PROMPT)),
                     "text_too_long": ("prompt_too_long", str(MAX_PROMPT)), "k": ("invalid_request", str(MAX_K))}
    for name, (reason, word) in expect_reject.items():
        assert isinstance(a[name], Rejected) and a[name].reason == reason, (name, a[name])
        assert word in a[name].message, (name, a[name])
    wait_idle(server)


@pytest.mark.parametrize("hello, code", [
    (dict(protocol_version=2), "unsupported_version"),
    (dict(auth_token=None), "unauthorized"),
    (dict(auth_token="wrong-token"), "unauthorized"),
    (dict(model_id="gpt-17"), "model_mismatch"),
])
def test_handshake_failures_are_fatal_and_explained(server, hello, code):
    async def go():
        raw = await Raw.open(server, hello=False)
        base = {"type": "hello", "protocol_version": 1, "model_id": "smollm2-135m", "tokenizer_hash": "",
                "auth_token": TOKEN}
        await raw.send(json.dumps({**base, **hello}))
        error = await raw.recv()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await raw.recv(10)
        return error

    error = arun(go())
    assert isinstance(error, Error) and error.fatal and error.code == code and error.message


def test_handshake_rules_for_the_first_frame(server):
    async def go():
        silent = await Raw.open(server, hello=False)
        wrong = await Raw.open(server, hello=False)
        await wrong.send(encode(Ping(nonce=1)))
        first = await wrong.recv()
        timeout = await silent.recv(15)  # the server gives up on a client that never says hello
        for raw in (silent, wrong):
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await raw.recv(10)
        return first, timeout

    first, timeout = arun(go())
    assert first.code == "handshake_required" and first.fatal
    assert timeout.code == "handshake_timeout" and timeout.fatal


def test_client_library_reports_refusals(server):
    async def go():
        with pytest.raises(CloudError) as info:
            await CloudClient.connect(server.url, auth_token="nope", open_timeout_s=10)
        return info.value

    assert arun(go()).code == "unauthorized"


def test_huge_frame_closes_only_that_connection(server, ref):
    async def go():
        raw = await Raw.open(server)
        await raw.send("x" * (4 * MAX_BYTES))  # far over the websocket size limit
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            await raw.recv(10)
        return info.value

    closed = arun(go())
    assert closed.rcvd is not None and closed.rcvd.code == 1009  # "message too big"
    assert server.alive() and server.health()["status"] == "ok"


async def verdicts(raw: Raw, n: int) -> list:
    """The next ``n`` accepted/rejected frames of a connection (tokens of accepted requests may come between:
    a cluster places requests one after another)."""
    seen = []
    while len(seen) < n:
        msg = await raw.recv(30)
        if isinstance(msg, (Accepted, Rejected)):
            seen.append(msg)
    return seen


def test_flood_beyond_the_limits_is_rejected_and_others_are_unaffected(server, ref, tokenizer_hash):
    long_ids = ref.text_ids(MAX_PROMPT - 40)
    good_ids = ref.ids("What is the capital of Italy?")
    rejected_before = server.metric("pdlink_cloud_rejections_total", reason="overloaded")

    async def flood(started: asyncio.Event):
        await asyncio.wait_for(started.wait(), 60)
        conns = [await Raw.open(server) for _ in range(7)]
        for i in range(PER_CONN + 1):  # one connection over its own limit, with short prompts
            await conns[0].send(prefill(f"f0-{i}", good_ids, MAX_K))
        # Its verdicts first: a gateway places one connection's requests in turn, so another connection's flood
        # sent at once could take the server-wide places before this connection's last ones.
        answers = await verdicts(conns[0], PER_CONN + 1)
        for c, raw in enumerate(conns[1:], start=1):  # six more with long prompts: over the server's limits
            for i in range(PER_CONN):
                await raw.send(prefill(f"f{c}-{i}", long_ids, 4))
        for raw in conns[1:]:
            answers += await verdicts(raw, PER_CONN)
        for c, raw in enumerate(conns):  # give the slots back: cancel what was accepted
            for m in answers:
                if isinstance(m, Accepted) and m.request_id.startswith(f"f{c}-"):
                    await raw.send(Cancel(request_id=m.request_id))
        for raw in conns:
            await raw.close()
        return answers

    async def good(started: asyncio.Event):
        async with await connect(server, tokenizer_hash) as client:
            stream = await client.prefill(prompt_token_ids=good_ids, max_leading_tokens=MAX_K)
            async for event in stream:
                if isinstance(event, Accepted):
                    started.set()  # the flood hits while this request is being served
            return stream

    async def go():
        started = asyncio.Event()
        return await asyncio.gather(flood(started), good(started))

    answers, stream = arun(go(), timeout_s=240)
    accepted = [m for m in answers if isinstance(m, Accepted)]
    rejected = [m for m in answers if isinstance(m, Rejected)]
    assert len(accepted) + len(rejected) == 7 * PER_CONN + 1
    assert [a.request_id for a in accepted[:PER_CONN]] == [f"f0-{i}" for i in range(PER_CONN)]
    assert len(accepted) <= MAX_LIVE - 1  # the good request holds one place
    assert all(r.reason == "overloaded" and r.message for r in rejected)
    per_conn = [r for r in rejected if "per connection" in r.message]
    server_wide = [r for r in rejected if r not in per_conn]
    assert [r.request_id for r in per_conn] == [f"f0-{PER_CONN}"]
    assert server_wide  # 29 live requests exceed the 24-request limit (or the TTFT budget first)
    assert all(("TTFT" in r.message or "limit of" in r.message) and r.retry_after_s > 0 for r in server_wide)
    assert [t.token_id for t in stream.tokens] == ref.greedy(good_ids, MAX_K)
    wait_idle(server, timeout_s=60)
    assert server.metric("pdlink_cloud_rejections_total", reason="overloaded") >= rejected_before + len(rejected)


def test_generate_reports_an_unreachable_cloud_clearly(capsys):
    from pdlink.cli import main
    from pdlink.cloud.server_process import free_port

    url = f"ws://127.0.0.1:{free_port()}"
    assert main(["generate", "--mode", "cloud", "--cloud", url, "--prompt", "hi", "--max-tokens", "4"]) == 2
    assert "cannot reach the cloud" in capsys.readouterr().err
