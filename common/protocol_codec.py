"""Frames to messages and back (protocol v1): one JSON text frame per message, tagged by ``type``.

Decoding is strict about size, JSON, the tag and every field's type and constraint, and says what was
wrong as a ``ProtocolError`` with the code the peer gets (docs/protocol.md)."""

from __future__ import annotations

from typing import Union, get_args

import msgspec

from .protocol_messages import (
    DEFAULT_MAX_MESSAGE_BYTES, SUPPORTED_VERSIONS, Accepted, Cancel, Done, Error, Hello, Message, Ping, Pong,
    PrefillRequest, ProtocolError, RefinedPrompt, Rejected, Stop, Token, Welcome, request_id_problem,
)

ClientMessage = Union[Hello, PrefillRequest, Stop, Cancel, Ping]
ServerMessage = Union[Welcome, Accepted, Rejected, Token, RefinedPrompt, Done, Error, Pong]

_CLIENT_TAGS = frozenset(c.__struct_config__.tag for c in get_args(ClientMessage))
_SERVER_TAGS = frozenset(c.__struct_config__.tag for c in get_args(ServerMessage))
_client_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_encoder = msgspec.json.Encoder()
# Reading a frame can fail in more ways than msgspec.DecodeError: invalid UTF-8 (or lone surrogates
# in a str) and very deep nesting surface as UnicodeError and RecursionError.
_READ_ERRORS = (msgspec.DecodeError, UnicodeError, RecursionError)


def encode(msg: Message) -> str:
    """The JSON text frame for ``msg``. Raises ``TypeError`` for anything that is not a message struct."""
    if not isinstance(msg, Message):
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return _encoder.encode(msg).decode("utf-8")


def decode_client(frame: str | bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> ClientMessage:
    """Decode a client->server frame. Raises ``ProtocolError`` (and nothing else) for any bad frame."""
    return _decode(frame, max_bytes, _client_decoder, _CLIENT_TAGS, Hello)


def decode_server(frame: str | bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> ServerMessage:
    """Decode a server->client frame. Raises ``ProtocolError`` (and nothing else) for any bad frame."""
    return _decode(frame, max_bytes, _server_decoder, _SERVER_TAGS, Welcome)


def _decode(frame, max_bytes, decoder, tags, versioned):
    if isinstance(frame, (bytearray, memoryview)):
        frame = bytes(frame)
    if not isinstance(frame, (str, bytes)):
        raise ProtocolError("malformed_json", f"a frame must be str or bytes, not {type(frame).__name__}")
    size = len(frame)
    if isinstance(frame, str) and size <= max_bytes < 4 * size:  # a char is 1..4 UTF-8 bytes
        size = len(frame.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError("oversized", f"frame of {size} bytes is over the {max_bytes}-byte limit")
    try:
        msg = decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise _classify(frame, exc, tags, versioned) from None
    except _READ_ERRORS as exc:
        raise ProtocolError("malformed_json", f"frame is not valid JSON: {exc}") from None
    if isinstance(msg, versioned) and msg.protocol_version not in SUPPORTED_VERSIONS:
        raise _version_error(msg.protocol_version, versioned)
    return msg


def _classify(frame, exc: msgspec.ValidationError, tags, versioned) -> ProtocolError:
    """Turn a typed-decode failure into the most specific ``ProtocolError``, re-reading the frame untyped."""
    try:
        obj = msgspec.json.decode(frame)
    except (*_READ_ERRORS, msgspec.ValidationError):  # typed decoding can stop before the bad part
        return ProtocolError("malformed_json", f"frame is not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return ProtocolError("not_an_object", f"a frame must be a JSON object, got {type(obj).__name__}")
    msg_type = obj.get("type")
    rid = obj.get("request_id")
    rid = rid if request_id_problem(rid) is None else None
    if "type" not in obj:
        return ProtocolError("missing_type", "the frame has no `type` field", rid)
    if not isinstance(msg_type, str) or msg_type not in tags:
        return ProtocolError("unknown_type", f"unknown message type {_short(msg_type)}", rid)
    tag = versioned.__struct_config__.tag
    version = obj.get("protocol_version")
    if msg_type == tag and not (type(version) is int and version in SUPPORTED_VERSIONS):
        return _version_error(version, versioned)
    return ProtocolError("bad_field", f"bad `{msg_type}` message: {exc}", rid, msg_type)


def _version_error(version, versioned) -> ProtocolError:
    supported = ", ".join(map(str, sorted(SUPPORTED_VERSIONS)))
    return ProtocolError(
        "unsupported_version",
        f"protocol_version {_short(version)} is not supported; supported: {supported}",
        msg_type=versioned.__struct_config__.tag,
    )


def _short(value: object) -> str:
    """A bounded rendering of a peer's value for an error message."""
    if isinstance(value, str):
        return repr(value[:64])
    if isinstance(value, bool) or value is None or (isinstance(value, int) and abs(value) < 10**18):
        return repr(value)
    return f"<{type(value).__name__}>"
