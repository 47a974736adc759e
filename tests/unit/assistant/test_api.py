"""The assistant's HTTP API in process (FastAPI's test client) over a fake engine: OpenAI's shapes, every kind
of bad input as an OpenAI error with its status, prefix reuse between turns, and sequences freed."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from pdlink.assistant.app import create_app
from pdlink.assistant.config import AssistantConfig
from pdlink.assistant.errors import APIError
from pdlink.assistant.service import Assistant
from pdlink.edge.session import Session, SessionConfig
from tests.unit.assistant.fake_engine import BatchFakeEngine

MODEL = "fake"
HELLO = [{"role": "user", "content": "the device and the cloud"}]


@pytest.fixture()
def served():
    engine = BatchFakeEngine(context_window=256)
    assistant = Assistant(AssistantConfig(package=MODEL, context_window=256, max_concurrency=2,
                                          kept_conversations=2), engine=engine)
    with TestClient(create_app(assistant)) as client:
        yield client, assistant, engine


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "temperature": 0,
                                                     "max_tokens": 6, **body})


def sse_events(response) -> list:
    out = []
    for line in response.text.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def device_answer(messages, max_tokens):
    engine = BatchFakeEngine(context_window=256)
    tok = engine.tokenizer
    session = Session(SessionConfig(), engine=engine)
    try:
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
        return session.complete(ids, mode="device", max_tokens=max_tokens)
    finally:
        session.close()


def test_models_health_and_a_greedy_chat_answer_equal_to_the_sessions(served):
    client, _, _ = served
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
    assert client.get("/health").json()["status"] == "ok"
    body = chat(client).json()
    expected = device_answer(HELLO, 6)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["choices"][0]["finish_reason"] == str(expected.finish_reason)
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": len(expected.token_ids),
                             "total_tokens": expected.prompt_tokens + len(expected.token_ids),
                             "prompt_tokens_details": {"cached_tokens": 0}}
    pd = body["x_pdlink"]
    assert pd["mode"] == "device" and pd["origins"] == ["device"] * len(expected.token_ids)
    assert pd["handover_index"] is None and pd["fallback"] is None and pd["ttft_s"] > 0


def test_stream_carries_the_same_text_origin_per_token_finish_usage_and_done(served):
    client, _, _ = served
    whole = chat(client, x_pdlink={"mode": "device"}).json()["choices"][0]["message"]["content"]
    events = sse_events(chat(client, stream=True, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    chunks = events[:-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole
    tokens = [c for c in chunks if c.get("x_pdlink", {}).get("origin")]
    assert [t["x_pdlink"]["origin"] for t in tokens] == ["device"] * len(tokens) and tokens
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(tokens)


def test_completions_take_raw_text_and_token_ids(served):
    client, _, engine = served
    body = client.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 4,
                                                "temperature": 0}).json()
    ids = engine.tokenizer.encode("abc")
    by_ids = client.post("/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 4,
                                                  "temperature": 0}).json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == by_ids["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_a_second_turn_reuses_the_first_turns_kv_and_finished_requests_keep_only_kept_sequences(served):
    client, assistant, engine = served
    first = chat(client).json()
    answer = first["choices"][0]["message"]["content"]
    turn2 = HELLO + [{"role": "assistant", "content": answer}, {"role": "user", "content": "more"}]
    second = chat(client, messages=turn2).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert second["x_pdlink"]["cached_prompt_tokens"] == second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert second["choices"][0]["message"]["content"] == device_answer(turn2, 6).text  # reuse changes nothing
    assert len(engine.sequences) == len(assistant.kv) <= 2 and assistant.inflight == 0


@pytest.mark.parametrize("body, status, param, code", [
    ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ({"temperature": 2.5}, 400, "temperature", None),
    ({"top_p": 0}, 400, "top_p", None),
    ({"max_tokens": 0}, 400, "max_tokens", None),
    ({"n": 2}, 400, "n", None),
    ({"seed": -1}, 400, "seed", None),
    ({"stop": [""]}, 400, "stop", None),
    ({"messages": []}, 400, "messages", None),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", None),
    ({"max_tokens": 1000}, 400, "messages", "context_length_exceeded"),
    ({"messages": [{"role": "user", "content": "x" * 300}], "max_tokens": None}, 400, "messages",
     "context_length_exceeded"),
    ({"x_pdlink": {"mode": "pd"}}, 400, "x_pdlink.mode", None),
    ({"x_pdlink": {"mode": "warp"}}, 400, "x_pdlink.mode", None),
])
def test_bad_requests_get_openai_errors_with_the_right_status(served, body, status, param, code):
    client, assistant, _ = served
    r = chat(client, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and err["code"] == code and err["type"] == "invalid_request_error"
    assert chat(client).status_code == 200 and assistant.inflight == 0  # still serving


def test_malformed_json_unknown_routes_and_a_flood_are_openai_errors(served):
    client, assistant, _ = served
    r = client.post("/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    for _ in range(assistant.cfg.max_concurrency):  # the slots in-flight requests hold
        assistant.admit()
    r = chat(client)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(APIError):
        assistant.admit()
    assistant.inflight = 0
    assert chat(client).status_code == 200


def test_metrics_count_requests_tokens_and_batches(served):
    client, _, _ = served
    chat(client)
    text = client.get("/metrics").text
    assert 'pdlink_assistant_requests_total{endpoint="chat",mode="device",status="200"} 1.0' in text
    assert 'pdlink_assistant_tokens_total{origin="device"}' in text and "pdlink_assistant_decode_rows_total" in text


def test_the_chat_page_is_served(served):
    client, _, _ = served
    r = client.get("/")
    assert r.status_code == 200 and "/v1/chat/completions" in r.text and "tok-cloud" in r.text
