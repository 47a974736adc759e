"""Fuzzing the wire protocol v1 codecs and connections with hypothesis: bad input never escapes as a crash."""

from __future__ import annotations

import json
from typing import get_args

import msgspec

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdlink.common.protocol import (
    Accepted, Cancel, ClientConnection, ClientMessage, ConnectionState, Done, Error, Hello, Limits, Ping, Pong,
    PrefillRequest, ProtocolError, RefinedPrompt, RefineOptions, Rejected, RequestState, SamplingParams,
    ServerConnection, ServerMessage, Stop, Token, Welcome, decode_client, decode_server, encode,
)

MODEL, TOK_HASH, VOCAB = "m", "h", 50
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

MESSAGES = {cls.__struct_config__.tag: cls for cls in (*get_args(ClientMessage), *get_args(ServerMessage))}
FIELDS = sorted({f.name for cls in MESSAGES.values() for f in msgspec.structs.fields(cls)}
                | {"temperature", "top_p", "top_k", "seed", "enabled", "window", "max_prompt_tokens"})

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(["r1", "r2", MODEL, TOK_HASH, "eos", "stopped"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
small_ints = st.integers(-1, 52)
indices = st.integers(-1, 9)
sampling = st.fixed_dictionaries({}, optional={"temperature": st.floats(-1, 3), "top_p": st.floats(-0.5, 1.5),
                                               "top_k": small_ints, "seed": st.none() | small_ints})
plausible = {  # values near the valid ones, so that the fuzzer gets past the type checks often
    "protocol_version": st.sampled_from([1, 1, 1, 2]), "request_id": st.sampled_from(["r1", "r2", "r3", ""]),
    "max_leading_tokens": indices, "after_index": indices, "index": indices, "token_id": small_ints,
    "prompt_token_ids": st.none() | st.lists(st.integers(0, 52), max_size=10),
    "prompt_text": st.none() | st.text(max_size=5),
    "stop_token_ids": st.lists(small_ints, max_size=3), "tokens_sent": indices, "model_id": st.just(MODEL),
    "tokenizer_hash": st.sampled_from([TOK_HASH, "x"]), "auth_token": st.sampled_from([None, "k", "bad"]),
    "fatal": st.booleans(), "reason": st.sampled_from(["eos", "overloaded", "?"]), "sampling": sampling,
    "kept_indices": st.lists(small_ints, max_size=4), "keep_ratio": st.floats(-1, 2), "nonce": small_ints,
    "refine": st.none() | st.fixed_dictionaries({"keep_ratio": st.floats(0, 1.5), "window": small_ints}),
    "queue_position": small_ints, "estimated_ttft_s": st.floats(0, 2), "cloud_time_s": st.floats(0, 2),
    "cloud_busy_s": st.floats(0, 2), "text": st.text(max_size=3), "code": st.text(max_size=3),
    "message": st.text(max_size=3), "server": st.text(max_size=3),
}


@st.composite
def json_objects(draw):
    """Mostly near-valid messages: a known tag with most of its fields, some mangled, some extra."""
    tag = draw(scalars) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(sorted(MESSAGES)))
    obj = {} if draw(st.integers(0, 19)) == 0 else {"type": tag}
    names = [f.name for f in msgspec.structs.fields(MESSAGES[tag])] if tag in MESSAGES else []
    for name in [n for n in names if draw(st.integers(0, 9))] + draw(st.lists(st.sampled_from(FIELDS), max_size=2)):
        mangle = name not in plausible or draw(st.integers(0, 9)) == 0
        obj[name] = draw(json_values if mangle else plausible[name])
    return obj


def dumps(obj) -> str:
    return json.dumps(obj, allow_nan=True)  # NaN/Infinity are invalid JSON: good fuzz too


messages = json_objects().map(dumps)
frames = st.one_of(messages, messages, messages, json_objects().map(lambda o: dumps(o).encode()),
                   st.text(max_size=200), st.binary(max_size=200), json_values.map(dumps))


rids = st.sampled_from(["r1", "r2", "r3"])
valid_client_frames = st.one_of(
    st.builds(PrefillRequest, request_id=rids, prompt_token_ids=st.lists(st.integers(0, 49), min_size=1, max_size=9),
              max_leading_tokens=st.integers(1, 8), stop_token_ids=st.lists(st.integers(0, 49), max_size=2),
              sampling=st.builds(SamplingParams, temperature=st.floats(0, 2), top_p=st.floats(0.1, 1),
                                 top_k=st.integers(0, 50), seed=st.none() | st.integers(0, 99))),
    st.builds(Stop, request_id=rids, after_index=st.integers(0, 9)),
    st.builds(Cancel, request_id=rids),
    st.builds(Ping, nonce=st.integers(0, 9)),
).map(encode)
valid_server_frames = st.one_of(
    st.builds(Accepted, request_id=rids),
    st.builds(Token, request_id=rids, index=st.integers(0, 3), token_id=st.integers(0, 49), text=st.text(max_size=2)),
    st.builds(Done, request_id=rids, reason=st.sampled_from(["eos", "stopped"]), tokens_sent=st.integers(0, 3)),
    st.builds(Rejected, request_id=rids, reason=st.just("overloaded")),
    st.builds(RefinedPrompt, request_id=rids, kept_indices=st.lists(st.integers(0, 3), max_size=3),
              keep_ratio=st.floats(0, 1)),
    st.builds(Error, code=st.text(max_size=3), message=st.just(""), fatal=st.just(False)),
    st.builds(Pong),
).map(encode)


def decodes_or_protocol_error(decode, frame):
    try:
        decode(frame, max_bytes=512)
    except ProtocolError as exc:
        assert exc.code and exc.message
        assert exc.request_id is None or isinstance(exc.request_id, str)


def fresh_server() -> ServerConnection:
    return ServerConnection(Limits(max_prompt_tokens=8, max_leading_tokens=8, max_concurrent_requests=2,
                                   max_message_bytes=512), "k", MODEL, TOK_HASH, VOCAB)


def open_server() -> ServerConnection:
    server = fresh_server()
    server.receive_frame(encode(Hello(protocol_version=1, model_id=MODEL, tokenizer_hash=TOK_HASH, auth_token="k")))
    server.data_to_send()
    return server


def open_client() -> ClientConnection:
    client = ClientConnection(max_message_bytes=512)
    client.hello(MODEL, TOK_HASH)
    client.receive_frame(encode(Welcome(protocol_version=1, server="s", model_id=MODEL, tokenizer_hash=TOK_HASH)))
    client.prefill(PrefillRequest(request_id="r1", prompt_token_ids=[1], max_leading_tokens=8))
    client.prefill(PrefillRequest(request_id="r2", prompt_token_ids=[1], max_leading_tokens=8, stop_token_ids=[3]))
    client.prefill(PrefillRequest(request_id="r3", prompt_token_ids=[1, 2, 3, 4], max_leading_tokens=3,
                                  refine=RefineOptions()))
    client.receive_frame(encode(Accepted(request_id="r1")))
    client.stop("r2", 1)
    client.data_to_send()
    return client


def all_server_frames_decode(server: ServerConnection):
    for frame in server.data_to_send():
        decode_server(frame)


@FUZZ
@given(frames)
def test_decoders_raise_only_protocol_error(frame):
    decodes_or_protocol_error(decode_client, frame)
    decodes_or_protocol_error(decode_server, frame)


@FUZZ
@given(st.lists(frames, max_size=6))
def test_server_receive_frame_never_raises(batch):
    server = fresh_server()
    for frame in batch:
        assert isinstance(server.receive_frame(frame), list)
        all_server_frames_decode(server)  # whatever it answers is well-formed


@FUZZ
@given(st.lists(st.one_of(valid_client_frames, valid_client_frames, frames), max_size=12))
def test_open_server_with_a_shell_keeps_its_guarantees(batch):
    """A fuzzed client against a shell that accepts everything and streams one token per frame."""
    server, stops, next_index = open_server(), {}, {}
    for frame in batch:
        for event in server.receive_frame(frame):
            if isinstance(event, PrefillRequest):
                server.accept(event.request_id)
            elif isinstance(event, Stop):
                stops[event.request_id] = min(stops.get(event.request_id, event.after_index), event.after_index)
        for request_id in server.in_flight:
            if server.request_state(request_id) is not RequestState.PENDING:
                if not server.send_token(request_id, 7, "x", 0.0):
                    assert server.finish(request_id, server.finish_reason(request_id), 0.0)
        for msg in map(decode_server, server.data_to_send()):  # all sent after this frame's Stop, if any
            if isinstance(msg, Token):
                assert msg.index == next_index.get(msg.request_id, 0)
                assert msg.index <= stops.get(msg.request_id, msg.index)
                next_index[msg.request_id] = msg.index + 1
            elif isinstance(msg, Done):
                assert msg.tokens_sent == next_index.get(msg.request_id, 0)
            elif isinstance(msg, Error) and msg.fatal:
                assert server.state is ConnectionState.CLOSED


@FUZZ
@given(st.lists(st.one_of(valid_server_frames, valid_server_frames, frames), max_size=12))
def test_client_receive_frame_never_raises(batch):
    for client in (ClientConnection(max_message_bytes=512), open_client()):
        next_index = {}
        for frame in batch:
            for event in client.receive_frame(frame):
                if isinstance(event, Token):  # delivered tokens: in order, none past the stop index
                    assert event.index == next_index.get(event.request_id, 0)
                    next_index[event.request_id] = event.index + 1
                    assert event.request_id != "r2" or event.index <= 1
        for frame in client.data_to_send():
            decode_client(frame)


@FUZZ
@given(k=st.integers(1, 8), stop_at=st.integers(0, 10), stop_after_sent=st.integers(0, 10),
       sent_total=st.integers(0, 12))
def test_no_token_past_the_stop_index(k, stop_at, stop_after_sent, sent_total):
    server = open_server()
    server.receive_frame(encode(PrefillRequest(request_id="r", prompt_token_ids=[1], max_leading_tokens=k)))
    server.accept("r")
    for i in range(sent_total):
        if i == stop_after_sent:
            server.receive_frame(encode(Stop(request_id="r", after_index=stop_at)))
        server.send_token("r", 3, "t", float(i))
    msgs = [decode_server(f) for f in server.data_to_send()]
    indices = [m.index for m in msgs if m.__struct_config__.tag == "token"]
    assert indices == list(range(len(indices))) and len(indices) <= k
    if stop_after_sent < sent_total:
        before = min(stop_after_sent, k)
        assert len(indices) <= max(before, stop_at + 1)
