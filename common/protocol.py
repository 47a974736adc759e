"""Wire protocol v1 of the P/D-Device link, Sans-I/O: text frames in, events out; calls in, frames out.

``ServerConnection`` and ``ClientConnection`` hold one websocket connection's protocol state. The
shell (the asyncio server or client) feeds every received text frame to ``receive_frame()``, acts
on the events it returns, calls the send methods, and writes ``data_to_send()`` to the socket.
Nothing here does I/O or reads a clock; docs/protocol.md describes the protocol itself.

This module is the one import for users of the protocol; the parts live in
:mod:`~pdlink.common.protocol_messages` (messages, reasons), :mod:`~pdlink.common.protocol_codec` (frames),
:mod:`~pdlink.common.connection`
(what both sides share), :mod:`~pdlink.common.server_connection` and :mod:`~pdlink.common.client_connection`.
"""

from __future__ import annotations

from .client_connection import ClientConnection, ClientEvent
from .connection import ConnectionState, ProtocolViolation, RequestState
from .protocol_codec import ClientMessage, ServerMessage, decode_client, decode_server, encode
from .protocol_messages import (
    CHAT_ROLES, DEFAULT_MAX_MESSAGE_BYTES, DONE_REASONS, MAX_REQUEST_ID_CHARS, PROTOCOL_VERSION, REJECT_REASONS,
    SUPPORTED_VERSIONS, Accepted, Cancel, ChatMessage, Done, DoneReason, Error, Hello, Limits, LocalProtocolError,
    Message, Numerics, Ping, Pong, PrefillRequest, ProtocolError, RefinedPrompt, RefineOptions, Rejected, RejectReason,
    SamplingParams, Stop, Token, Welcome, request_id_problem,
)
from .server_connection import RequestRejected, ServerConnection, ServerEvent

__all__ = [
    "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_REQUEST_ID_CHARS", "CHAT_ROLES",
    "RejectReason", "DoneReason", "REJECT_REASONS", "DONE_REASONS", "ProtocolError", "LocalProtocolError",
    "Message", "Limits", "Numerics", "SamplingParams", "RefineOptions", "ChatMessage", "Hello", "PrefillRequest", "Stop",
    "Cancel", "Ping", "Welcome", "Accepted", "Rejected", "Token", "RefinedPrompt", "Done", "Error", "Pong",
    "ClientMessage", "ServerMessage", "encode", "decode_client", "decode_server", "request_id_problem",
    "ProtocolViolation", "RequestRejected", "ServerEvent", "ClientEvent", "ConnectionState", "RequestState",
    "ServerConnection", "ClientConnection",
]
