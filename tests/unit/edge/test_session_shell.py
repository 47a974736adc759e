"""The session's asyncio shell (Session, SessionRun, CloudLink) with a fake engine against the real cloud server
on loopback over the fake backend: no model. Both sides run the same deterministic fake model, so pd mode
must give the device-mode answer token for token."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from pdlink.cloud.config import CloudConfig
from pdlink.cloud.server import CloudServer
from pdlink.cloud.server_process import free_port
from pdlink.common.protocol import Accepted, Done, Token, Welcome
from pdlink.common.sampling import SamplingParams
from pdlink.edge.chat import Conversation
from pdlink.edge.cloud_link import CloudFailure, CloudLink, CloudTarget
from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.emulation import EmulatedCloudLink, NetworkEmulation
from pdlink.edge.session import Session, SessionConfig
from tests.unit.cloud.fake_backend import VOCAB, FakeBackend, FakeClock, FakeTokenizer, next_token

PROMPT = "the device and the cloud"  # 24 fake tokens
SLOW_DEVICE = DeviceProfile(name="slow-fake", prefill_tok_s=200.0, decode_s_per_token=0.01, source="unit test")
TIMEOUT_S = 20.0


class DeviceTokenizer(FakeTokenizer):
    """The fake tokenizer as the device's engine has it (chat wrapping, end-of-turn lookup)."""

    info = {"eos_token": ""}

    def encode_chat(self, text: str) -> list[int]:
        return self.encode(text)

    def token_id(self, token: str):
        return None


@dataclass(frozen=True)
class _Config:
    eos_token_ids: tuple[int, ...] = (0,)


class FakeEngine:
    """The engine calls a session makes, over the fake model the fake backend also runs."""

    def __init__(self, context_window: int = 512):
        self.tokenizer, self.model_config, self.context_window = DeviceTokenizer(), _Config(), context_window
        self.num_threads, self.manifest = 1, None
        self.seqs: dict[int, list[int]] = {}
        self._next = 0

    def add_sequence(self) -> int:
        self._next += 1
        self.seqs[self._next] = []
        return self._next

    def remove_sequence(self, seq: int) -> None:
        del self.seqs[seq]

    def rollback(self, seq: int, n: int) -> None:
        del self.seqs[seq][len(self.seqs[seq]) - n:]

    def num_computed_tokens(self, seq: int) -> int:
        return len(self.seqs[seq])

    def prefill(self, seq: int, ids) -> np.ndarray:
        self.seqs[seq].extend(ids)
        row = np.zeros(VOCAB, dtype=np.float32)
        row[next_token(self.seqs[seq])] = 1.0
        return row

    def decode(self, seq: int, token: int) -> np.ndarray:
        return self.prefill(seq, [token])

    def decode_greedy(self, seq: int, token: int) -> int:
        return int(self.decode(seq, token).argmax())


@pytest.fixture(scope="module")
def cloud_url():
    """The real cloud server over the fake backend, on its own event loop thread."""
    backend = FakeBackend(FakeClock())
    server = CloudServer(CloudConfig(model="fake", model_id="fake", port=free_port(), warm_up=False,
                                     max_prompt_tokens=256, max_leading_tokens=64), backend=backend)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    urls = []

    def run():
        loop.run_until_complete(server.serve_forever(on_ready=lambda url: (urls.append(url), ready.set())))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT_S)
    yield urls[0]
    loop.call_soon_threadsafe(server.request_shutdown)
    thread.join(TIMEOUT_S)


def session(url: str | None, profile=None, **cfg) -> Session:
    cloud = CloudTarget(url, model_id="fake", event_timeout_s=5, open_timeout_s=5) if url else None
    return Session(SessionConfig(cloud=cloud, device_profile=profile, **cfg), engine=FakeEngine(),
                   profile=profile or SLOW_DEVICE)


def test_pd_hands_over_and_equals_device_mode(cloud_url):
    s = session(cloud_url, SLOW_DEVICE)
    try:
        want = s.complete(PROMPT, mode="device", max_tokens=16, ignore_eos=True)
        shown = list(s.generate(PROMPT, mode="pd", max_tokens=16, ignore_eos=True))
        pd = s.last
    finally:
        s.close()
    assert [t.token_id for t in shown] == want.token_ids == pd.token_ids
    j = pd.handover_index
    assert pd.fallback is None and j is not None and 0 < j < 16, (pd.fallback, pd.settings)
    assert pd.origins == ["cloud"] * j + ["device"] * (16 - j)
    done = pd.cloud_done  # released at the hand-over: by the device's stop, or having made its k tokens
    assert done["tokens_sent"] >= j and (done["reason"] == "max_leading_tokens" or done["stop_after_index"] == j - 1)
    assert "".join(t.text for t in shown) + pd.tail_text == pd.text


def test_cloud_mode_without_a_package_lets_the_cloud_tokenize(cloud_url):
    s = Session(SessionConfig(cloud=CloudTarget(cloud_url, model_id="fake", event_timeout_s=5)))
    try:
        result = s.complete(PROMPT, mode="cloud", max_tokens=6, raw=True)
    finally:
        s.close()
    assert result.origins == ["cloud"] * len(result.token_ids) and 0 < len(result.token_ids) <= 6
    assert result.prompt_tokens == len(PROMPT) and result.fallback is None


def test_an_unreachable_cloud_is_a_fallback_and_the_answer_is_whole():
    s = session(f"ws://127.0.0.1:{free_port()}", SLOW_DEVICE)
    try:
        result = s.complete(PROMPT, mode="pd", max_tokens=8, ignore_eos=True)
        want = s.complete(PROMPT, mode="device", max_tokens=8, ignore_eos=True)
    finally:
        s.close()
    assert result.fallback.startswith("cloud_unreachable") and result.token_ids == want.token_ids


def test_stop_strings_cut_the_answer_in_every_mode(cloud_url):
    s = session(cloud_url)
    try:
        free = s.complete(PROMPT, mode="device", max_tokens=12, ignore_eos=True).text
        stop = free[5:7]
        for mode in ("device", "cloud"):
            result = s.complete(PROMPT, mode=mode, max_tokens=12, ignore_eos=True, stop=(stop,))
            assert result.finish_reason == "stop" and result.text == free[: free.index(stop)], mode
    finally:
        s.close()


def test_a_conversation_reuses_the_kv_cache_of_earlier_turns(cloud_url):
    s = session(None)
    chat = Conversation(s)
    try:
        list(chat.ask("first question", mode="device", max_tokens=4, ignore_eos=True))
        first_cached = chat.last.cached_prompt_tokens
        list(chat.ask("and a second", mode="device", max_tokens=4, ignore_eos=True))
        second = chat.last
    finally:
        chat.close()
        s.close()
    assert first_cached == 0 and second.cached_prompt_tokens > len("<user>first question")
    assert s.engine.seqs == {}  # the conversation's sequence is freed


def test_the_cloud_link_delivers_welcome_then_the_stream_in_order(cloud_url):
    async def run(link_cls, **kw):
        link = link_cls(CloudTarget(cloud_url, model_id="fake", event_timeout_s=5), "fake-tokenizer", **kw)
        link.start(prompt_token_ids=[5, 6, 7], max_leading_tokens=3, sampling=SamplingParams())
        events = []
        while not events or not isinstance(events[-1], (Done, CloudFailure)):
            events.append(await asyncio.wait_for(link.inbox.get(), TIMEOUT_S))
        await link.close()
        return events

    for cls, kw in ((CloudLink, {}), (EmulatedCloudLink, {"network": NetworkEmulation(rtt_ms=20)})):
        events = asyncio.run(run(cls, **kw))
        assert isinstance(events[0], Welcome) and isinstance(events[1], Accepted)
        assert [e.index for e in events if isinstance(e, Token)] == [0, 1, 2]
        assert isinstance(events[-1], Done) and events[-1].reason == "max_leading_tokens"
