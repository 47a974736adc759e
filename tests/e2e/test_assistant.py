"""The desktop assistant end to end: ``pdlink serve`` (the real compiled package) with the real cloud server
on loopback, driven by the official ``openai`` client, raw HTTP and a headless chromium. Every wait is bounded.
One cloud server and one assistant serve the whole module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import openai
import pytest

from pdlink.assistant.server_process import AssistantProcess
from pdlink.cloud.server_process import ServerProcess
from pdlink.common.real_text import real_text

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
QUESTION = "What is the capital of France?"
# Slower than this machine's engine, so that in pd mode the cloud's first tokens come first.
SLOW_DEVICE = {"name": "test-slow-device", "prefill_tok_s": 10.0, "decode_s_per_token": 0.05,
               "source": "test profile (slower than this machine's engine)"}

# About 120 tokens: the slow device needs ~10 s to prefill them, the cloud (even on a busy machine) far less.
LONG_PROMPT = "Summarize this text in one sentence.\n\n" + real_text(500)


@pytest.fixture(scope="module")
def cloud(q4_1_package, tmp_path_factory):
    with ServerProcess("--model", str(q4_1_package), "--threads", "1", "--max-leading-tokens", "64",
                       log_path=tmp_path_factory.mktemp("cloud") / "cloud.log") as proc:
        proc.wait_ready(timeout_s=240)
        yield proc


@pytest.fixture(scope="module")
def assistant(q4_1_package, cloud, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("assistant")
    profile = tmp / "slow.json"
    profile.write_text(json.dumps(SLOW_DEVICE))
    config = tmp / "assistant.toml"
    config.write_text(f'package = "{q4_1_package}"\nmode = "device"\nmax_concurrency = 2\nkept_conversations = 2\n'
                      f'context_window = 1024\nthreads = 1\n')
    with AssistantProcess("--config", str(config), "--cloud", cloud.url, "--device-profile", str(profile),
                          log_path=tmp / "assistant.log") as proc:
        proc.wait_ready(timeout_s=240)
        yield proc


@pytest.fixture(scope="module")
def client(assistant):
    return openai.OpenAI(base_url=assistant.url + "/v1", api_key="local", max_retries=0, timeout=120)


def generate(package, prompt: str, max_tokens: int, raw: bool = False) -> dict:
    cmd = [sys.executable, "-m", "pdlink", "generate", "--package", str(package), "--prompt", prompt,
           "--max-tokens", str(max_tokens), "--temperature", "0", "--threads", "1", "--json"]
    out = subprocess.run(cmd + (["--raw"] if raw else []), capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


def test_openai_client_chat_and_completions_greedy_equal_pdlink_generate(client, q4_1_package):
    assert [m.id for m in client.models.list()] == [MODEL]
    ref = generate(q4_1_package, QUESTION, 24)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=24, temperature=0)
    assert chat.choices[0].message.content == ref["text"] and "Paris" in ref["text"]
    assert chat.usage.prompt_tokens == ref["prompt_tokens"] and chat.usage.completion_tokens == len(ref["token_ids"])
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0, stream=True)
        if c.choices]
    assert "".join(pieces) == ref["text"]
    raw = generate(q4_1_package, "The three primary colors are", 12, raw=True)
    done = client.completions.create(model=MODEL, prompt="The three primary colors are", max_tokens=12, temperature=0)
    assert done.choices[0].text == raw["text"] and done.choices[0].finish_reason == raw["finish_reason"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The three primary colors are", max_tokens=12, temperature=0, stream=True) if c.choices)
    assert streamed == raw["text"]


def test_pd_request_shows_cloud_then_device_tokens_and_equals_device_mode(client):
    messages = [{"role": "user", "content": LONG_PROMPT}]
    # pd first: afterwards the device holds this prompt's KV (prefix reuse) and needs no cloud for it
    pd = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                        extra_body={"x_pdlink": {"mode": "pd", "k": 4}})
    device = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    x = pd.model_extra["x_pdlink"]
    assert x["mode"] == "pd" and x["cloud"] and "cloud" in x["origins"], (x["fallback"], x["settings"], x["cached_prompt_tokens"])
    assert pd.choices[0].message.content == device.choices[0].message.content  # lossless hand-over
    if x["fallback"] is None:
        assert "device" in x["origins"] and x["handover_index"] is not None


def test_second_turn_reuses_the_first_turns_kv(client):
    turn1 = [{"role": "user", "content": "Tell me a fact about the Moon."}]
    first = client.chat.completions.create(model=MODEL, messages=turn1, max_tokens=16, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And one about Mars?"}]
    second = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0)
    assert second.model_extra["x_pdlink"]["cached_prompt_tokens"] >= first.usage.prompt_tokens


def _held_sequences(assistant) -> int:
    h = assistant.health()
    return h["sequences"] - h["kept_conversations"]


def test_a_client_leaving_mid_stream_frees_its_sequence(client, assistant):
    stream = client.chat.completions.create(model=MODEL, max_tokens=300, temperature=0, stream=True,
                                            messages=[{"role": "user", "content": "Write a long story about a dragon."}])
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got >= 3:
            break
    stream.close()
    for _ in range(200):  # bounded: the server notices the closed connection and cancels the request
        if assistant.health()["inflight"] == 0:
            break
        time.sleep(0.1)
    assert assistant.health()["inflight"] == 0 and _held_sequences(assistant) == 0
    assert assistant.metric("pdlink_assistant_requests_total", endpoint="chat", mode="device", status="cancelled") >= 1


def test_bad_input_gets_openai_errors_and_the_server_keeps_serving(client, assistant):
    status, body = assistant.http("/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [')
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as overflow:
        client.completions.create(model=MODEL, prompt="word " * 1100, max_tokens=8)
    assert overflow.value.code == "context_length_exceeded"
    for bad in ({"temperature": -1}, {"top_p": 1.5}, {"max_tokens": 0}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **bad)
    ok = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert ok.choices[0].message.content


def test_a_flood_beyond_the_configured_concurrency_gets_429_and_the_rest_are_served(client, assistant):
    outcomes: list[str] = []

    def one():
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
                                           max_tokens=12, temperature=0)
            outcomes.append("ok")
        except openai.RateLimitError as exc:
            assert exc.status_code == 429 and exc.code == "rate_limit_exceeded"
            outcomes.append("429")

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(set(outcomes)) == ["429", "ok"] and len(outcomes) == 6, outcomes
    assert assistant.health()["inflight"] == 0 and _held_sequences(assistant) == 0
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_chat_page_streams_an_answer_with_both_origins_marked(assistant, tmp_path):
    if _chromium() is None:
        pytest.skip("Debian's chromium is not installed (assistant/install_browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto(assistant.url + "/", timeout=30_000)
            page.select_option("#mode", "pd")
            page.fill("#k", "4")
            page.fill("#max_tokens", "16")
            page.fill("#prompt", "In one sentence, what is this about?\n\n" + real_text(500))
            page.click("#send")
            page.wait_for_selector(".answer span[data-origin='cloud']", timeout=60_000)
            page.wait_for_selector(".answer span[data-origin='device']", timeout=60_000)
            page.wait_for_function("document.querySelector('#send').disabled === false", timeout=60_000)
            page.screenshot(path=str(tmp_path / "chat_page.png"))
            meta = page.inner_text(".meta")
        finally:
            browser.close()
    assert "mode pd" in meta and (tmp_path / "chat_page.png").stat().st_size > 0


def test_sigterm_finishes_short_requests_cancels_long_ones_frees_both_and_exits(q4_1_package, tmp_path):
    profile = tmp_path / "slow.json"
    profile.write_text(json.dumps(SLOW_DEVICE))
    log = tmp_path / "assistant.log"
    with AssistantProcess("--package", str(q4_1_package), "--threads", "1", "--context-window", "512",
                          "--device-profile", str(profile), "--shutdown-grace-s", "6", log_path=log) as proc:
        proc.wait_ready(timeout_s=240)
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="local", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=MODEL, max_tokens=400, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "Write a long poem."}])
        next(iter(stream))  # a long answer is in flight (20 s at the slow device's pace)
        short: list = []
        t = threading.Thread(target=lambda: short.append(client.chat.completions.create(
            model=MODEL, max_tokens=2, temperature=0, messages=[{"role": "user", "content": "Write a long poem."}])))
        t.start()
        for _ in range(100):  # bounded: the short request has arrived
            if proc.health()["inflight"] == 2:
                break
            time.sleep(0.05)
        # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught (the conventional exit status)
        assert proc.stop(timeout_s=30) in (0, -15)
        t.join(30)
    text = log.read_text()
    assert short and short[0].choices[0].message.content  # finished within the grace period
    assert text.count("finish=") >= 1 and "cancelled" in text, text[-2000:]
    assert "Application shutdown complete" in text and "Finished server process" in text
