"""Wire protocol v1 (pdlink.common.protocol): codecs, the server and client state machines. No sockets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pdlink.common.protocol import (
    PROTOCOL_VERSION, Accepted, Cancel, ClientConnection, ConnectionState, Done, Error, Hello, Limits,
    LocalProtocolError, Ping, Pong, PrefillRequest, ProtocolError, ProtocolViolation, RefinedPrompt,
    RefineOptions, Rejected, RequestRejected, RequestState, SamplingParams, ServerConnection, Stop, Token,
    Welcome, decode_client, decode_server, encode,
)

MODEL, TOK_HASH, VOCAB, AUTH = "smollm2-135m", "abc123", 1000, "s3cret"


def make_server(**kw) -> ServerConnection:
    limits = kw.pop("limits", Limits(max_prompt_tokens=16, max_leading_tokens=8, max_concurrent_requests=2,
                                     max_message_bytes=4096))
    return ServerConnection(limits, kw.pop("auth", AUTH), MODEL, TOK_HASH, VOCAB, **kw)


def hello_frame(**fields) -> str:
    base = dict(protocol_version=PROTOCOL_VERSION, model_id=MODEL, tokenizer_hash=TOK_HASH, auth_token=AUTH)
    return encode(Hello(**{**base, **fields}))


def sent(conn) -> list:
    """Decode what a connection queued (server frames for ServerConnection, client frames otherwise)."""
    dec = decode_server if isinstance(conn, ServerConnection) else decode_client
    return [dec(f) for f in conn.data_to_send()]


def open_server(**kw) -> ServerConnection:
    server = make_server(**kw)
    assert isinstance(server.receive_frame(hello_frame())[0], Hello)
    assert isinstance(sent(server)[0], Welcome)
    return server


def req(rid="r1", **kw) -> PrefillRequest:
    kw.setdefault("max_leading_tokens", 4)
    if "prompt_text" not in kw:
        kw.setdefault("prompt_token_ids", [1, 2, 3])
    return PrefillRequest(request_id=rid, **kw)


def req_frame(rid="r1", **kw) -> str:
    """A prefill frame written field by field: it may break rules that ``req()`` cannot even be built with."""
    kw.setdefault("max_leading_tokens", 4)
    if "prompt_text" not in kw:
        kw.setdefault("prompt_token_ids", [1, 2, 3])
    return json.dumps({"type": "prefill", "request_id": rid, **kw})


def refused(build) -> str:
    """How a message that breaks a rule is refused: "built" (``__post_init__`` raised ValueError) or the
    ``ProtocolError`` code of decoding its frame ("bad_field"); "" when it is valid."""
    try:
        msg = build()
    except ValueError:
        return "built"
    try:
        decode_client(encode(msg))
    except ProtocolError as exc:
        return exc.code
    return ""


def submit(server, request) -> list:
    return server.receive_frame(encode(request))


def pump(src, dst) -> list:
    events = []
    for frame in src.data_to_send():
        events += dst.receive_frame(frame)
    return events


def open_pair(**kw):
    server, client = make_server(**kw), ClientConnection()
    client.hello(MODEL, TOK_HASH, auth_token=AUTH)
    assert [type(e) for e in pump(client, server)] == [Hello]
    assert [type(e) for e in pump(server, client)] == [Welcome]
    assert server.state is client.state is ConnectionState.OPEN
    return server, client


# ---- codecs ------------------------------------------------------------------------------------

CLIENT_MESSAGES = [
    Hello(protocol_version=1, model_id=MODEL, tokenizer_hash=TOK_HASH, auth_token="t",
          device_profile={"soc": "sd8g3", "ram_gb": 12, "npu": True}, client="android/0.1"),
    Hello(protocol_version=1, model_id=MODEL, tokenizer_hash=TOK_HASH),
    PrefillRequest(request_id="a", prompt_token_ids=[1, 2], max_leading_tokens=3,
                   sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=7),
                   stop_token_ids=[2], refine=RefineOptions(enabled=True, keep_ratio=0.25, window=16)),
    PrefillRequest(request_id="b", prompt_text="héllo ✓", max_leading_tokens=1),
    Stop(request_id="a", after_index=0),
    Cancel(request_id="a"),
    Ping(nonce=123456789),
]
SERVER_MESSAGES = [
    Welcome(protocol_version=1, server="pdlink-cloud/0.1", model_id=MODEL, tokenizer_hash=TOK_HASH, limits=Limits()),
    Accepted(request_id="a", queue_position=3, estimated_ttft_s=0.25),
    Rejected(request_id="a", reason="overloaded", message="busy", retry_after_s=1.5),
    Rejected(request_id="a", reason="invalid_request", message="no"),
    Token(request_id="a", index=0, token_id=42, text=" the", cloud_time_s=1234.5),
    RefinedPrompt(request_id="a", kept_indices=[0, 2, 5], keep_ratio=0.5),
    Done(request_id="a", reason="stopped", tokens_sent=3, cloud_busy_s=0.125),
    Error(request_id=None, code="bad_field", message="x", fatal=False),
    Error(request_id="a", code="unknown_request", message="y", fatal=True),
    Pong(nonce=5),
]


@pytest.mark.parametrize("msg", CLIENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_client_message_round_trip(msg):
    frame = encode(msg)
    assert isinstance(frame, str) and json.loads(frame)["type"] == type(msg).__struct_config__.tag
    assert decode_client(frame) == msg
    assert decode_client(frame.encode()) == msg


@pytest.mark.parametrize("msg", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
def test_server_message_round_trip(msg):
    assert decode_server(encode(msg)) == msg
    assert decode_server(encode(msg).encode()) == msg


def test_unknown_fields_are_ignored_and_defaults_fill_in():
    msg = decode_client('{"type":"prefill","request_id":"r","max_leading_tokens":2,"prompt_text":"hi",'
                        '"future":{"x":[1]},"sampling":{"temperature":0.5,"min_p":0.1}}')
    assert msg == PrefillRequest(request_id="r", max_leading_tokens=2, prompt_text="hi",
                                 sampling=SamplingParams(temperature=0.5))
    assert decode_server('{"type":"pong","nonce":1,"later":true}') == Pong(nonce=1)


def test_encode_rejects_non_messages():
    with pytest.raises(TypeError):
        encode({"type": "ping"})


def _code(decode, frame, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame, **kw)
    return info.value


@pytest.mark.parametrize("frame", ["", "{", '{"type":"ping"', "nope", '{"type":"ping"} x', "{'type':'ping'}",
                                   '{"type":"ping","nonce":NaN}', b"\xff\xfe", b'{"type":"\xed\xa0\x80"}',
                                   "[" * 100_000 + "]" * 100_000])
def test_malformed_json(frame):
    assert _code(decode_client, frame, max_bytes=1 << 20).code == "malformed_json"
    assert _code(decode_server, frame, max_bytes=1 << 20).code == "malformed_json"


def test_lone_surrogate_and_non_frame_inputs_are_protocol_errors():
    assert _code(decode_client, '{"type":"ping","x":"\ud800"}').code == "malformed_json"
    assert _code(decode_client, 42).code == "malformed_json"
    assert decode_client(bytearray(b'{"type":"ping"}')) == Ping()


@pytest.mark.parametrize("frame", ["[]", "1", '"ping"', "null", "true", '[{"type":"ping"}]'])
def test_frame_must_be_an_object(frame):
    assert _code(decode_client, frame).code == "not_an_object"
    assert _code(decode_server, frame).code == "not_an_object"


def test_missing_and_unknown_type():
    assert _code(decode_client, '{"request_id":"r"}').code == "missing_type"
    err = _code(decode_client, '{"type":"teleport","request_id":"r9"}')
    assert (err.code, err.request_id) == ("unknown_type", "r9") and "teleport" in err.message
    assert _code(decode_client, '{"type":7}').code == "unknown_type"
    assert _code(decode_client, '{"type":' + "9" * 30 + "}").code == "unknown_type"
    assert _code(decode_client, '{"type":' + "9" * 5000 + "}").code in ("unknown_type", "malformed_json")
    # each direction only knows its own messages
    assert _code(decode_client, encode(Pong())).code == "unknown_type"
    assert _code(decode_server, encode(Ping())).code == "unknown_type"


@pytest.mark.parametrize("frame,where", [
    ('{"type":"stop","request_id":"r","after_index":"3"}', "after_index"),
    ('{"type":"stop","request_id":"r","after_index":1.0}', "after_index"),
    ('{"type":"stop","request_id":"r","after_index":true}', "after_index"),
    ('{"type":"stop","request_id":"r"}', "after_index"),
    ('{"type":"cancel","request_id":5}', "request_id"),
    ('{"type":"prefill","request_id":"r","max_leading_tokens":2,"prompt_token_ids":[1,"2"]}', "prompt_token_ids"),
    ('{"type":"prefill","request_id":"r","max_leading_tokens":2,"prompt_text":"x","sampling":{"top_k":0.5}}', "top_k"),
    ('{"type":"prefill","request_id":"r","max_leading_tokens":2,"prompt_text":"x","sampling":[]}', "sampling"),
    ('{"type":"hello","protocol_version":1,"model_id":"m"}', "tokenizer_hash"),
    ('{"type":"hello","protocol_version":1,"model_id":"m","tokenizer_hash":"h","device_profile":[]}', "device_profile"),
])
def test_wrong_field_types(frame, where):
    err = _code(decode_client, frame)
    assert err.code == "bad_field" and where in err.message
    assert err.msg_type == json.loads(frame)["type"]


def test_bad_field_error_names_the_request():
    err = _code(decode_client, '{"type":"stop","request_id":"r7","after_index":"x"}')
    assert err.request_id == "r7"
    assert _code(decode_client, '{"type":"stop","request_id":"","after_index":"x"}').request_id is None


@pytest.mark.parametrize("version", [0, 2, -1, "1", None, 10**30, [], {}, [1], True, 1.0])
def test_unsupported_version(version):
    frame = json.dumps(dict(type="hello", protocol_version=version, model_id="m", tokenizer_hash="h"))
    assert _code(decode_client, frame).code == "unsupported_version"
    welcome = json.dumps(dict(type="welcome", protocol_version=version, server="s", model_id="m", tokenizer_hash="h"))
    assert _code(decode_server, welcome).code == "unsupported_version"


def test_oversized_frames():
    frame = encode(PrefillRequest(request_id="r", prompt_text="x" * 2000, max_leading_tokens=1))
    assert decode_client(frame, max_bytes=len(frame)).prompt_text == "x" * 2000
    assert _code(decode_client, frame, max_bytes=len(frame) - 1).code == "oversized"
    assert _code(decode_server, frame.encode(), max_bytes=100).code == "oversized"
    # the limit counts UTF-8 bytes, not characters
    wide = encode(PrefillRequest(request_id="r", prompt_text="✓" * 300, max_leading_tokens=1))
    assert _code(decode_client, wide, max_bytes=len(wide) + 10).code == "oversized"
    assert decode_client(wide, max_bytes=len(wide.encode())).prompt_text == "✓" * 300


def test_sampling_and_request_validation():
    assert refused(lambda: req(sampling=SamplingParams())) == ""
    assert refused(lambda: req(sampling=SamplingParams(temperature=1.2, top_p=0.5, top_k=5, seed=0))) == ""
    for bad in [dict(temperature=-0.1), dict(temperature=math.nan), dict(temperature=math.inf), dict(top_p=0.0),
                dict(top_p=1.01), dict(top_p=math.nan), dict(top_k=-1), dict(seed=-1), dict(seed=2**64)]:
        assert refused(lambda: req(sampling=SamplingParams(**bad))), bad
    assert refused(lambda: req(refine=RefineOptions(keep_ratio=1.0))) == ""
    for bad in [dict(keep_ratio=0.0), dict(keep_ratio=1.5), dict(keep_ratio=math.nan), dict(window=-1)]:
        assert refused(lambda: req(refine=RefineOptions(**bad))), bad
    assert refused(req) == ""
    assert refused(lambda: req(prompt_text="hi", prompt_token_ids=None)) == ""
    for bad in [dict(prompt_text="hi", prompt_token_ids=[1]), dict(prompt_token_ids=None), dict(prompt_token_ids=[]),
                dict(prompt_text="", prompt_token_ids=None), dict(max_leading_tokens=0), dict(prompt_token_ids=[-1]),
                dict(stop_token_ids=[-2]), dict(rid=""), dict(rid="x" * 129), dict(rid="a\nb"),
                dict(sampling={"top_p": 2.0}), dict(refine={"window": -3})]:
        assert refused(lambda: req(**bad)), bad
        assert _code(decode_client, req_frame(**bad)).code == "bad_field", bad  # the same rule, on the wire
    assert refused(lambda: Stop(request_id="r", after_index=-1))
    assert refused(lambda: Cancel(request_id=""))


# ---- server: handshake --------------------------------------------------------------------------


def _fatal(server, events, code):
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert events[0].code == code and events[0].fatal
    frames = sent(server)
    assert len(frames) == 1 and isinstance(frames[0], Error) and frames[0].code == code and frames[0].fatal
    assert server.state is ConnectionState.CLOSED
    assert server.receive_frame(hello_frame()) == [] and server.data_to_send() == []


@pytest.mark.parametrize("frame", [encode(Ping()), encode(req()), encode(Stop(request_id="r", after_index=0))])
def test_message_before_handshake_is_fatal(frame):
    server = make_server()
    _fatal(server, server.receive_frame(frame), "handshake_required")


@pytest.mark.parametrize("frame,code", [("{", "malformed_json"), ("[]", "not_an_object"),
                                        ('{"type":"hello"}', "unsupported_version"),
                                        ('{"type":"hello","protocol_version":1}', "bad_field")])
def test_bad_first_frame_is_fatal(frame, code):
    server = make_server()
    _fatal(server, server.receive_frame(frame), code)


def test_wrong_protocol_version_is_fatal():
    server = make_server()
    frame = hello_frame().replace('"protocol_version":1', '"protocol_version":2')
    events = server.receive_frame(frame)
    _fatal(server, events, "unsupported_version")
    assert "supported: 1" in events[0].message


@pytest.mark.parametrize("token", [None, "", "s3cre", "s3cret ", "S3CRET", "s3cret\u00e9"])
def test_missing_or_wrong_auth_token_is_fatal(token):
    server = make_server()
    _fatal(server, server.receive_frame(hello_frame(auth_token=token)), "unauthorized")


def test_no_auth_needed_when_server_expects_none():
    server = make_server(auth=None)
    assert isinstance(server.receive_frame(hello_frame(auth_token=None))[0], Hello)
    assert isinstance(sent(server)[0], Welcome)


def test_model_mismatch_is_fatal():
    server = make_server()
    _fatal(server, server.receive_frame(hello_frame(model_id="llama")), "model_mismatch")


def test_welcome_carries_limits_and_identity():
    server = make_server(server="cloud-test")
    server.receive_frame(hello_frame(device_profile={"ram_gb": 8}))
    (welcome,) = sent(server)
    assert welcome == Welcome(protocol_version=1, server="cloud-test", model_id=MODEL, tokenizer_hash=TOK_HASH,
                              limits=server.limits)
    assert server.hello.device_profile == {"ram_gb": 8}


def test_tokenizer_mismatch_forces_text_prompts():
    server = make_server()
    assert isinstance(server.receive_frame(hello_frame(tokenizer_hash="other"))[0], Hello)
    welcome, error = sent(server)
    assert isinstance(welcome, Welcome) and error.code == "tokenizer_mismatch" and not error.fatal
    assert "prompt_text" in error.message and server.state is ConnectionState.OPEN
    (event,) = submit(server, req("ids"))
    assert event.rejected.reason == "invalid_request" and "tokenizer" in event.rejected.message
    (event,) = submit(server, req("stops", prompt_text="hi", prompt_token_ids=None, stop_token_ids=[2]))
    assert isinstance(event, RequestRejected)
    sent(server)
    assert isinstance(submit(server, req("text", prompt_text="hello", prompt_token_ids=None))[0], PrefillRequest)


def test_second_hello_is_a_non_fatal_error():
    server = open_server()
    (event,) = server.receive_frame(hello_frame())
    assert event.code == "unexpected_message" and not event.fatal
    assert sent(server)[0].code == "unexpected_message" and server.state is ConnectionState.OPEN


def test_bad_frames_after_handshake_are_not_fatal():
    server = open_server()
    for frame, code in [("{", "malformed_json"), ("[1]", "not_an_object"), ('{"x":1}', "missing_type"),
                        ('{"type":"warp"}', "unknown_type"), ('{"type":"ping","nonce":"a"}', "bad_field"),
                        ("x" * 5000, "oversized")]:
        (event,) = server.receive_frame(frame)
        assert (event.code, event.fatal) == (code, False)
        (error,) = sent(server)
        assert (error.code, error.fatal) == (code, False)
    assert server.state is ConnectionState.OPEN
    assert server.receive_frame(encode(Ping(nonce=9))) == [Ping(nonce=9)] and sent(server) == [Pong(nonce=9)]


# ---- server: prefill validation ------------------------------------------------------------------


def _rejected(server, request, reason) -> Rejected:
    (event,) = submit(server, request) if not isinstance(request, str) else server.receive_frame(request)
    assert isinstance(event, RequestRejected) and event.rejected.reason == reason, event
    (frame,) = sent(server)
    assert frame == event.rejected
    assert server.request_state(frame.request_id) is None
    return frame


def test_valid_prefill_is_pending_until_accepted():
    server = open_server()
    assert submit(server, req("r1")) == [req("r1")]
    assert server.request_state("r1") is RequestState.PENDING and sent(server) == []
    assert server.accept("r1", queue_position=2, estimated_ttft_s=0.3)
    assert sent(server) == [Accepted(request_id="r1", queue_position=2, estimated_ttft_s=0.3)]
    assert server.request_state("r1") is RequestState.ACCEPTED and server.in_flight == ["r1"]


def test_prompt_over_the_limit():
    server = open_server()
    assert submit(server, req("ok", prompt_token_ids=list(range(16))))[0].request_id == "ok"
    _rejected(server, req("long", prompt_token_ids=list(range(17))), "prompt_too_long")


def test_text_prompt_over_the_limit_with_a_token_counter():
    server = open_server(count_text_tokens=lambda text: len(text.split()))
    _rejected(server, req("long", prompt_text="w " * 17, prompt_token_ids=None), "prompt_too_long")
    assert isinstance(submit(server, req("ok", prompt_text="w " * 16, prompt_token_ids=None))[0], PrefillRequest)


@pytest.mark.parametrize("request_", [
    req_frame(sampling={"temperature": -1.0}), req_frame(sampling={"top_p": 0.0}),
    req_frame(sampling={"top_p": 1.5}), req_frame(sampling={"top_k": -1}),
    req_frame(sampling={"seed": -5}), req(max_leading_tokens=0), req(max_leading_tokens=9),
    req(prompt_token_ids=[1, VOCAB]), req(prompt_token_ids=[-1, 2]), req(prompt_token_ids=[10**30]),
    req(stop_token_ids=[VOCAB + 5]), req_frame(prompt_text="both", prompt_token_ids=[1]),
    req_frame(prompt_token_ids=None), req_frame(prompt_token_ids=[]),
    req(refine=RefineOptions(keep_ratio=0.0)),
], ids=lambda r: str(r)[:90])
def test_invalid_requests_are_rejected(request_):
    server = open_server()
    assert _rejected(server, request_, "invalid_request").request_id == "r1"
    assert isinstance(submit(server, req("r1"))[0], PrefillRequest)  # the id is free again


def test_undecodable_prefill_with_a_request_id_is_rejected():
    server = open_server()
    frame = '{"type":"prefill","request_id":"r5","max_leading_tokens":"many","prompt_text":"x"}'
    assert "max_leading_tokens" in _rejected(server, frame, "invalid_request").message


def test_invalid_request_id_is_an_error_not_a_rejection():
    server = open_server()
    for rid in ["", "x" * 200, "tab\there"]:
        (event,) = server.receive_frame(req_frame(rid))
        assert isinstance(event, ProtocolViolation) and event.code == "bad_field" and event.request_id is None
        assert sent(server)[0].code == "bad_field"


def test_duplicate_request_id():
    server = open_server()
    submit(server, req("r1"))
    server.accept("r1")
    sent(server)
    (event,) = submit(server, req("r1", max_leading_tokens=2))
    assert (event.code, event.request_id, event.fatal) == ("duplicate_request", "r1", False)
    (error,) = sent(server)
    assert error.code == "duplicate_request" and error.request_id == "r1"
    assert server.request_state("r1") is RequestState.ACCEPTED  # the original is untouched
    # a broken duplicate is an Error too, never a Rejected that would end the original
    submit_bad = '{"type":"prefill","request_id":"r1","max_leading_tokens":"x"}'
    assert server.receive_frame(submit_bad)[0].code == "bad_field" and sent(server)[0].code == "bad_field"
    # ids of finished requests stay taken
    server.finish("r1", "eos", 0.1)
    sent(server)
    assert submit(server, req("r1"))[0].code == "duplicate_request"


def test_too_many_requests_in_flight():
    server = open_server()
    submit(server, req("a"))
    submit(server, req("b"))
    rejected = _rejected(server, req("c"), "overloaded")
    assert "2" in rejected.message
    server.reject("a", "shutting_down", "bye", retry_after_s=3.0)
    assert sent(server) == [Rejected(request_id="a", reason="shutting_down", message="bye", retry_after_s=3.0)]
    assert isinstance(submit(server, req("c"))[0], PrefillRequest)
    _rejected(server, req("d"), "overloaded")
    server.accept("b")
    server.finish("b", "eos", 0.0)
    sent(server)
    assert isinstance(submit(server, req("d"))[0], PrefillRequest)


# ---- server: streaming and stop semantics --------------------------------------------------------


def stream(server, rid, n, start=100) -> list[bool]:
    return [server.send_token(rid, start + i, f"t{i}", float(i)) for i in range(n)]


def accepted(server, request):
    submit(server, request)
    server.accept(request.request_id)
    sent(server)


def test_tokens_get_consecutive_indices_until_k():
    server = open_server()
    accepted(server, req(max_leading_tokens=3))
    assert stream(server, "r1", 5) == [True, True, True, False, False]
    tokens = sent(server)
    assert [t.index for t in tokens] == [0, 1, 2] and [t.token_id for t in tokens] == [100, 101, 102]
    assert tokens[1] == Token(request_id="r1", index=1, token_id=101, text="t1", cloud_time_s=1.0)
    assert server.request_state("r1") is RequestState.STREAMING
    assert server.finish_reason("r1") == "max_leading_tokens"
    assert server.finish("r1", "max_leading_tokens", 0.5)
    assert sent(server) == [Done(request_id="r1", reason="max_leading_tokens", tokens_sent=3, cloud_busy_s=0.5)]
    assert server.request_state("r1") is RequestState.FINISHED and server.in_flight == []
    assert stream(server, "r1", 1) == [False] and sent(server) == []


@pytest.mark.parametrize("j", [0, 1, 2, 5])
def test_no_token_after_the_stop_index(j):
    server = open_server()
    accepted(server, req(max_leading_tokens=8))
    stream(server, "r1", 1)  # token 0 already out when the Stop arrives
    assert server.receive_frame(encode(Stop(request_id="r1", after_index=j))) == [Stop(request_id="r1", after_index=j)]
    stream(server, "r1", 8)
    indices = [t.index for t in sent(server)]
    assert indices == list(range(max(j, 0) + 1))
    assert server.finish_reason("r1") == "stopped"
    server.finish("r1", "stopped", 0.2)
    done = sent(server)[0]
    assert done.tokens_sent == j + 1 and done.stop_after_index == j


def test_stop_below_what_was_already_sent_ends_the_stream_now():
    server = open_server()
    accepted(server, req(max_leading_tokens=8))
    stream(server, "r1", 4)
    server.receive_frame(encode(Stop(request_id="r1", after_index=1)))
    assert server.finish_reason("r1") == "stopped" and stream(server, "r1", 1) == [False]


def test_the_smallest_stop_index_wins_and_stop_before_accept_counts():
    server = open_server()
    submit(server, req(max_leading_tokens=8))
    server.receive_frame(encode(Stop(request_id="r1", after_index=3)))
    server.receive_frame(encode(Stop(request_id="r1", after_index=1)))
    server.receive_frame(encode(Stop(request_id="r1", after_index=6)))
    server.accept("r1")
    assert stream(server, "r1", 5) == [True, True, False, False, False]


def test_eos_token_is_sent_and_ends_the_stream():
    server = open_server()
    accepted(server, req(max_leading_tokens=8, stop_token_ids=[7]))
    assert server.send_token("r1", 5, "a", 0.0) and server.finish_reason("r1") is None
    assert server.send_token("r1", 7, "</s>", 0.1) and server.finish_reason("r1") == "eos"
    assert not server.send_token("r1", 5, "a", 0.2)
    assert [t.token_id for t in sent(server)] == [5, 7]


def test_cancel_stops_tokens():
    server = open_server()
    accepted(server, req())
    stream(server, "r1", 1)
    assert server.receive_frame(encode(Cancel(request_id="r1"))) == [Cancel(request_id="r1")]
    assert stream(server, "r1", 2) == [False, False] and server.finish_reason("r1") == "cancelled"
    server.finish("r1", "cancelled", 0.0)
    assert [type(m) for m in sent(server)] == [Token, Done]


def test_cancel_before_accept():
    server = open_server()
    submit(server, req())
    server.receive_frame(encode(Cancel(request_id="r1")))
    assert server.finish("r1", "cancelled", 0.0)
    assert not server.accept("r1") and sent(server)[0].tokens_sent == 0


def test_late_stop_or_cancel_after_done_is_ignored_but_unknown_ids_are_errors():
    server = open_server()
    accepted(server, req())
    server.finish("r1", "eos", 0.0)
    sent(server)
    assert server.receive_frame(encode(Stop(request_id="r1", after_index=0))) == []
    assert server.receive_frame(encode(Cancel(request_id="r1"))) == [] and sent(server) == []
    (event,) = server.receive_frame(encode(Cancel(request_id="nope")))
    assert (event.code, event.request_id) == ("unknown_request", "nope")
    (event,) = server.receive_frame(encode(Stop(request_id="r1", after_index=-1)))
    assert event.code == "bad_field" and sent(server)[-1].code == "bad_field"


def test_server_side_misuse_raises_local_protocol_error():
    server = open_server()
    submit(server, req())
    with pytest.raises(LocalProtocolError):
        server.send_token("r1", 1, "x", 0.0)  # before accept
    server.accept("r1")
    with pytest.raises(LocalProtocolError):
        server.accept("r1")
    with pytest.raises(LocalProtocolError):
        server.reject("r1", "overloaded")  # already accepted
    with pytest.raises(LocalProtocolError):
        server.send_token("r1", VOCAB, "x", 0.0)
    with pytest.raises(LocalProtocolError):
        server.finish("r1", "bored", 0.0)
    with pytest.raises(LocalProtocolError):
        server.finish("never", "eos", 0.0)
    with pytest.raises(LocalProtocolError):
        server.reject("r1", "because")
    assert server.finish("r1", "error", 0.0) and not server.finish("r1", "error", 0.0)
    assert not server.send_token("ghost", 1, "x", 0.0)


def test_refined_prompt():
    server = open_server()
    accepted(server, req(prompt_token_ids=[1, 2, 3, 4], refine=RefineOptions(keep_ratio=0.5)))
    for bad in [[2, 1], [0, 0], [-1, 2], [0, 4]]:
        with pytest.raises(LocalProtocolError):
            server.send_refined_prompt("r1", bad, 0.5)
    assert server.send_refined_prompt("r1", [0, 3], 0.5)
    assert sent(server) == [RefinedPrompt(request_id="r1", kept_indices=[0, 3], keep_ratio=0.5)]
    with pytest.raises(LocalProtocolError):
        server.send_refined_prompt("r1", [0, 3], 0.5)  # only once
    accepted(server, req("plain"))
    with pytest.raises(LocalProtocolError):
        server.send_refined_prompt("plain", [0], 0.5)  # not requested


def test_connection_lost_ends_everything():
    server = open_server()
    accepted(server, req("a"))
    submit(server, req("b"))
    assert sorted(server.connection_lost()) == ["a", "b"]
    assert server.state is ConnectionState.CLOSED and server.in_flight == []
    assert not server.send_token("a", 1, "x", 0.0) and not server.finish("a", "disconnected", 0.0)
    assert not server.accept("b") and server.data_to_send() == []
    assert server.receive_frame(encode(Ping())) == []


def test_shell_errors_and_fatal_close():
    server = open_server()
    server.send_error("internal_error", "boom", request_id="r1")
    assert sent(server) == [Error(code="internal_error", message="boom", request_id="r1")]
    server.send_error("shutting_down", "bye", fatal=True)
    assert sent(server)[0].fatal and server.state is ConnectionState.CLOSED


# ---- client ----------------------------------------------------------------------------------------


def test_client_requires_hello_first_and_only_once():
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.prefill(req())
    client.hello(MODEL, TOK_HASH)
    with pytest.raises(LocalProtocolError):
        client.hello(MODEL, TOK_HASH)
    client.prefill(req())  # pipelining before the Welcome is allowed
    assert [type(m) for m in sent(client)] == [Hello, PrefillRequest]


def test_client_prefill_checks():
    server, client = open_pair()
    with pytest.raises(LocalProtocolError) as info:
        client.prefill(req(refine=RefineOptions(keep_ratio=0.0)))  # a rule only the decoder checks
    assert info.value.code == "bad_field"
    client.prefill(req("r1"))
    with pytest.raises(LocalProtocolError) as info:
        client.prefill(req("r1"))
    assert info.value.code == "duplicate_request"
    with pytest.raises(LocalProtocolError) as info:
        client.prefill(req("big", prompt_text="x" * 5000, prompt_token_ids=None))
    assert info.value.code == "oversized"
    with pytest.raises(LocalProtocolError):
        client.stop("nope", 0)
    with pytest.raises(LocalProtocolError):
        client.cancel("nope")
    with pytest.raises(LocalProtocolError):
        client.stop("r1", -1)


def test_client_tokenizer_mismatch():
    server, client = make_server(), ClientConnection()
    client.hello(MODEL, "different", auth_token=AUTH)
    pump(client, server)
    events = pump(server, client)
    assert [type(e) for e in events] == [Welcome, Error] and events[1].code == "tokenizer_mismatch"
    assert client.tokenizer_match is False and client.state is ConnectionState.OPEN
    with pytest.raises(LocalProtocolError) as info:
        client.prefill(req())
    assert info.value.code == "tokenizer_mismatch"
    client.prefill(req(prompt_text="hi", prompt_token_ids=None))


def test_full_session():
    server, client = open_pair()
    client.prefill(req("r1", max_leading_tokens=6, stop_token_ids=[999]))
    assert [type(e) for e in pump(client, server)] == [PrefillRequest]
    server.accept("r1", 0, 0.05)
    stream(server, "r1", 2)
    events = pump(server, client)
    assert [type(e) for e in events] == [Accepted, Token, Token]
    assert client.request_state("r1") is RequestState.STREAMING
    assert client.stop("r1", 2)
    stream(server, "r1", 2)  # token 3 leaves before the server sees the Stop
    in_flight = server.data_to_send()
    assert pump(client, server) == [Stop(request_id="r1", after_index=2)]
    assert stream(server, "r1", 1) == [False]
    server.finish("r1", server.finish_reason("r1"), 0.4)
    events = [e for f in in_flight for e in client.receive_frame(f)] + pump(server, client)
    assert [(type(e).__name__, getattr(e, "index", None)) for e in events] == [("Token", 2), ("Done", None)]
    assert events[-1] == Done(request_id="r1", reason="stopped", tokens_sent=4, cloud_busy_s=0.4,
                                 stop_after_index=2)
    assert client.request_state("r1") is RequestState.FINISHED and client.in_flight == []
    assert not client.stop("r1", 0) and not client.cancel("r1")
    client.ping(77)
    pump(client, server)
    assert pump(server, client) == [Pong(nonce=77)]


def test_client_rejected_request_frees_the_id():
    server, client = open_pair()
    client.prefill(req("r1", max_leading_tokens=50))
    pump(client, server)
    (event,) = pump(server, client)
    assert isinstance(event, Rejected) and event.reason == "invalid_request"
    assert client.request_state("r1") is None
    client.prefill(req("r1"))


def test_client_drops_tokens_after_cancel():
    server, client = open_pair()
    client.prefill(req())
    pump(client, server)
    server.accept("r1")
    stream(server, "r1", 1)
    client.cancel("r1")
    stream(server, "r1", 1)
    assert [type(e) for e in pump(server, client)] == [Accepted]
    pump(client, server)
    server.finish("r1", server.finish_reason("r1"), 0.0)
    assert pump(server, client) == [Done(request_id="r1", reason="cancelled", tokens_sent=2, cloud_busy_s=0.0)]


def client_with_request(**kw) -> ClientConnection:
    client = ClientConnection()
    client.hello(MODEL, TOK_HASH)
    client.receive_frame(encode(Welcome(protocol_version=1, server="s", model_id=MODEL, tokenizer_hash=TOK_HASH)))
    client.prefill(req(**kw))
    client.data_to_send()
    return client


def tok(index, token_id=5, rid="r1") -> str:
    return encode(Token(request_id=rid, index=index, token_id=token_id, text="", cloud_time_s=0.0))


def violation(events, code):
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation) and events[0].code == code, events
    assert not events[0].fatal


def test_client_detects_gaps_and_duplicates():
    client = client_with_request(max_leading_tokens=8)
    client.receive_frame(encode(Accepted(request_id="r1")))
    assert [e.index for e in client.receive_frame(tok(0))] == [0]
    violation(client.receive_frame(tok(2)), "token_gap")
    violation(client.receive_frame(tok(0)), "token_duplicate")
    assert [e.index for e in client.receive_frame(tok(1))] == [1]
    violation(client.receive_frame(tok(1)), "token_duplicate")
    events = client.receive_frame(encode(Done(request_id="r1", reason="eos", tokens_sent=3)))
    assert isinstance(events[0], Done) and events[1].code == "token_count_mismatch"


def test_client_order_violations():
    client = client_with_request(max_leading_tokens=2, stop_token_ids=[9])
    violation(client.receive_frame(tok(0)), "bad_state")  # token before accepted
    violation(client.receive_frame(tok(0, rid="zz")), "unknown_request")
    client.receive_frame(encode(Accepted(request_id="r1")))
    violation(client.receive_frame(encode(Accepted(request_id="r1"))), "bad_state")
    violation(client.receive_frame(encode(Rejected(request_id="r1", reason="overloaded"))), "bad_state")
    violation(client.receive_frame(encode(RefinedPrompt(request_id="r1", kept_indices=[0], keep_ratio=0.5))),
              "bad_field")  # refine not requested
    client.receive_frame(tok(0))
    client.receive_frame(tok(1))
    violation(client.receive_frame(tok(2)), "token_after_end")  # past k
    other = client_with_request(max_leading_tokens=5, stop_token_ids=[9])
    other.receive_frame(encode(Accepted(request_id="r1")))
    other.receive_frame(tok(0, token_id=9))
    violation(other.receive_frame(tok(1)), "token_after_end")  # past eos
    assert [type(e) for e in other.receive_frame(encode(Done(request_id="r1", reason="eos", tokens_sent=1)))] == [Done]
    violation(other.receive_frame(encode(Done(request_id="r1", reason="eos", tokens_sent=1))), "unknown_request")


def test_client_refined_prompt():
    client = client_with_request(prompt_token_ids=[1, 2, 3], refine=RefineOptions())
    good = RefinedPrompt(request_id="r1", kept_indices=[0, 2], keep_ratio=0.66)
    violation(client.receive_frame(encode(RefinedPrompt(request_id="r1", kept_indices=[0, 3], keep_ratio=0.5))),
              "bad_field")
    client = client_with_request(prompt_token_ids=[1, 2, 3], refine=RefineOptions())
    assert client.receive_frame(encode(good)) == [good]
    violation(client.receive_frame(encode(good)), "bad_field")  # only once


def test_client_handshake_errors():
    client = ClientConnection()
    violation(client.receive_frame(encode(SERVER_MESSAGES[0])), "unexpected_message")  # welcome before hello
    client.hello(MODEL, TOK_HASH)
    bad = encode(SERVER_MESSAGES[0]).replace('"protocol_version":1', '"protocol_version":3')
    (event,) = client.receive_frame(bad)
    assert event.code == "unsupported_version" and event.fatal and client.state is ConnectionState.CLOSED
    client = ClientConnection()
    client.hello(MODEL, TOK_HASH)
    fatal = Error(code="unauthorized", message="no", fatal=True)
    assert client.receive_frame(encode(fatal)) == [fatal] and client.state is ConnectionState.CLOSED
    assert client.receive_frame(encode(Pong())) == []
    with pytest.raises(LocalProtocolError):
        client.prefill(req())
    client = client_with_request()
    violation(client.receive_frame(encode(SERVER_MESSAGES[0])), "unexpected_message")  # second welcome
    violation(client.receive_frame("{"), "malformed_json")
    assert client.connection_lost() == ["r1"] and client.state is ConnectionState.CLOSED


def test_prompt_messages_are_a_third_prompt_form():
    from pdlink.common.protocol import ChatMessage

    chat = [ChatMessage(role="user", content="hi")]
    assert refused(lambda: req(prompt_token_ids=None, prompt_messages=chat)) == ""
    with pytest.raises(ValueError, match="exactly one"):  # ids and messages together
        req(prompt_messages=chat)
    with pytest.raises(ValueError, match="the prompt is empty"):
        req(prompt_token_ids=None, prompt_messages=[])
    robot = [ChatMessage(role="robot", content="x")]
    assert "role" in _code(decode_client, encode(req(prompt_token_ids=None, prompt_messages=robot))).message
    frame = ('{"type":"prefill","request_id":"m","max_leading_tokens":2,'
             '"prompt_messages":[{"role":"user","content":"hi","extra":1}]}')
    assert decode_client(frame).prompt_messages == chat
    server = open_server()
    assert isinstance(submit(server, req("m", prompt_token_ids=None, prompt_messages=chat))[0], PrefillRequest)
    assert server.accept("m", prompt_tokens=7)
    assert sent(server)[-1] == Accepted(request_id="m", prompt_tokens=7)


# ---- reasons, one SamplingParams, Sans-I/O -----------------------------------------------------------


def test_reasons_are_their_wire_text():
    from pdlink.common.protocol import DONE_REASONS, REJECT_REASONS, DoneReason, RejectReason

    assert encode(Rejected(request_id="a", reason=RejectReason.OVERLOADED)) == encode(
        Rejected(request_id="a", reason="overloaded"))
    assert str(DoneReason.EOS) == f"{DoneReason.EOS}" == "eos" and DoneReason.EOS == "eos"
    assert sorted(REJECT_REASONS) == ["invalid_request", "overloaded", "prompt_too_long", "shutting_down",
                                      "unauthorized"]
    assert {r.value: r.finish_reason for r in DONE_REASONS} == {
        "eos": "stop", "max_leading_tokens": "length", "stopped": "stopped", "cancelled": "cancelled",
        "error": "error", "disconnected": "disconnected"}
    assert Done(request_id="a", reason="max_leading_tokens", tokens_sent=1).finish_reason == "length"
    assert Done(request_id="a", reason="teleported", tokens_sent=1).finish_reason == "teleported"  # a future reason
    assert decode_server(encode(Done(request_id="a", reason="later", tokens_sent=0))).reason == "later"


def test_the_wire_sampling_params_are_the_samplers():
    from pdlink.common.sampling import Sampler, SamplingParams as EngineSamplingParams

    assert SamplingParams is EngineSamplingParams
    sampling = decode_client(req_frame(sampling={"temperature": 0.5, "seed": 3})).sampling
    assert sampling == SamplingParams(temperature=0.5, seed=3)
    assert Sampler(sampling).sample(np.array([0.0, 9.0, 0.0])) in (0, 1, 2)


def test_the_protocol_core_imports_no_io():
    import subprocess
    import sys

    code = ("import sys, pdlink.common.protocol; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'websockets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
