"""An asyncio client for protocol v1: a thin websockets shell around the Sans-I/O ``ClientConnection``.

    async with await CloudClient.connect(url, auth_token=token, tokenizer_hash=tok.hash) as client:
        stream = await client.prefill(prompt_token_ids=ids, max_leading_tokens=8, stop_token_ids=[2])
        async for event in stream:          # Accepted, Token..., then Done (or Rejected)
            ...
            await stream.stop(after_index=3)

Every wait is bounded: ``connect`` by ``open_timeout_s``, each event by ``event_timeout_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from typing import Sequence

import websockets
from websockets.asyncio.client import connect as ws_connect

from pdlink.common.models import DEFAULT_MODEL
from pdlink.common.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES, Accepted, ChatMessage, ClientConnection, Done, Error, LocalProtocolError,
    PrefillRequest, ProtocolViolation, RefinedPrompt, RefineOptions, Rejected, SamplingParams, Token, Welcome,
)

log = logging.getLogger(__name__)

StreamEvent = Accepted | Token | RefinedPrompt | Rejected | Done


class CloudError(Exception):
    """The server refused the connection (``code`` from its fatal error), or the connection was lost."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class CloudStream:
    """One request's events, in order; iteration ends after ``Done`` or ``Rejected``."""

    def __init__(self, client: "CloudClient", request_id: str):
        self.client, self.request_id = client, request_id
        self.accepted: Accepted | None = None
        self.rejected: Rejected | None = None
        self.done: Done | None = None
        self.tokens: list[Token] = []
        self.refined: RefinedPrompt | None = None
        self.errors: list[Error] = []  # non-fatal errors the server sent about this request
        self._queue: asyncio.Queue[StreamEvent | CloudError] = asyncio.Queue()
        self._over = False

    @property
    def finished(self) -> bool:
        return self.done is not None or self.rejected is not None

    def __aiter__(self):
        return self

    async def __anext__(self) -> StreamEvent:
        """The next event. Raises ``TimeoutError`` after ``event_timeout_s`` without one, ``CloudError``
        when the connection is lost first."""
        if self._over:
            raise StopAsyncIteration
        item = await asyncio.wait_for(self._queue.get(), self.client.event_timeout_s)
        if isinstance(item, CloudError):
            self._over = True
            raise item
        if isinstance(item, (Done, Rejected)):
            self._over = True
        return item

    async def collect(self) -> "CloudStream":
        """Read to the end; returns self (``tokens``, ``done`` / ``rejected`` filled in)."""
        async for _ in self:
            pass
        return self

    async def stop(self, after_index: int) -> bool:
        """Ask for no token after ``after_index``; False when the request already ended."""
        return await self.client._call(self.client.conn.stop, self.request_id, after_index)

    async def cancel(self) -> bool:
        """Abandon the request; a ``Done(cancelled)`` ends the stream. False when it already ended."""
        return await self.client._call(self.client.conn.cancel, self.request_id)

    def _put(self, event) -> None:
        if isinstance(event, Accepted):
            self.accepted = event
        elif isinstance(event, Token):
            self.tokens.append(event)
        elif isinstance(event, RefinedPrompt):
            self.refined = event
        elif isinstance(event, Rejected):
            self.rejected = event
        elif isinstance(event, Done):
            self.done = event
        self._queue.put_nowait(event)


class CloudClient:
    """One connection to a cloud server; use :meth:`connect`."""

    def __init__(self, ws, conn: ClientConnection, event_timeout_s: float):
        self.ws, self.conn, self.event_timeout_s = ws, conn, event_timeout_s
        self.welcome: Welcome | None = None
        self.notices: list[Error | ProtocolViolation] = []  # connection-level non-fatal errors
        self._streams: dict[str, CloudStream] = {}
        self._send_lock = asyncio.Lock()
        self._welcomed: asyncio.Future = asyncio.get_running_loop().create_future()
        self._ids = itertools.count(1)
        self._reader: asyncio.Task | None = None
        self.closed_error: CloudError | None = None

    @classmethod
    async def connect(cls, url: str, *, model_id: str = DEFAULT_MODEL, tokenizer_hash: str = "",
                      auth_token: str | None = None, device_profile: dict | None = None, client_name: str = "pdlink",
                      open_timeout_s: float = 10.0, event_timeout_s: float = 60.0,
                      ssl_context: ssl.SSLContext | None = None,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> "CloudClient":
        """Open the websocket and complete the handshake. Raises ``CloudError`` when the server refuses
        (``unauthorized``, ``model_mismatch``, ...), ``TimeoutError`` / ``OSError`` when it is unreachable."""
        ws = await asyncio.wait_for(ws_connect(url, open_timeout=open_timeout_s, max_size=max_message_bytes * 2,
                                               compression=None, ssl=ssl_context), open_timeout_s)
        client = cls(ws, ClientConnection(max_message_bytes), event_timeout_s)
        client._reader = asyncio.create_task(client._read())
        await client._call(client.conn.hello, model_id, tokenizer_hash, auth_token, device_profile, client_name)
        try:
            await asyncio.wait_for(asyncio.shield(client._welcomed), open_timeout_s)
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def tokenizer_match(self) -> bool:
        """True when token ids may cross (the server's tokenizer hash equals ours)."""
        return bool(self.conn.tokenizer_match)

    async def prefill(self, *, max_leading_tokens: int, prompt_token_ids: Sequence[int] | None = None,
                      prompt_text: str | None = None, prompt_messages: Sequence[dict] | None = None,
                      sampling: SamplingParams | None = None, stop_token_ids: Sequence[int] = (),
                      refine: RefineOptions | None = None, request_id: str | None = None) -> CloudStream:
        """Send a ``prefill``; give exactly one of the three prompt forms. ``prompt_messages``
        (``[{"role", "content"}]``) asks the server to apply its chat template and stop at its end of turn.
        Raises ``LocalProtocolError`` for an invalid request, ``CloudError`` when the connection is gone."""
        if self.closed_error:
            raise self.closed_error
        rid = request_id or f"r{next(self._ids)}"
        messages = None if prompt_messages is None else [ChatMessage(role=m["role"], content=m["content"])
                                                         for m in prompt_messages]
        ids = None if prompt_token_ids is None else [int(t) for t in prompt_token_ids]
        try:  # the rules __post_init__ checks (one prompt, printable id) raise while building
            req = PrefillRequest(request_id=rid, max_leading_tokens=max_leading_tokens, prompt_token_ids=ids,
                                 prompt_text=prompt_text, prompt_messages=messages, sampling=sampling or SamplingParams(),
                                 stop_token_ids=[int(t) for t in stop_token_ids], refine=refine)
        except ValueError as exc:
            raise LocalProtocolError("bad_field", str(exc), rid) from None
        stream = CloudStream(self, rid)
        self._streams[rid] = stream
        try:
            await self._call(self.conn.prefill, req)
        except BaseException:
            self._streams.pop(rid, None)
            raise
        return stream

    async def ping(self, nonce: int = 0) -> None:
        await self._call(self.conn.ping, nonce)

    async def close(self) -> None:
        """Close the connection (bounded); in-flight streams end with ``CloudError("closed")``."""
        try:
            await asyncio.wait_for(self.ws.close(), 5.0)
        except (TimeoutError, websockets.exceptions.WebSocketException, OSError):
            pass
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_all(CloudError("closed", "the client closed the connection"))

    async def __aenter__(self) -> "CloudClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    async def _call(self, method, *args):
        """Run a ``ClientConnection`` method and send what it queued, in order."""
        async with self._send_lock:
            result = method(*args)
            for frame in self.conn.data_to_send():
                try:
                    await self.ws.send(frame)
                except websockets.exceptions.ConnectionClosed as exc:
                    raise CloudError("connection_closed", f"the connection closed: {exc}") from exc
            return result

    async def _read(self) -> None:
        fatal, error = None, CloudError("connection_closed", "the server closed the connection")
        try:
            async for frame in self.ws:
                for event in self.conn.receive_frame(frame):
                    fatal = fatal or self._route(event)
        except websockets.exceptions.ConnectionClosed as exc:
            error = CloudError("connection_closed", f"the connection closed: {exc}")
        finally:
            self.conn.connection_lost()
            self._fail_all(fatal or error)

    def _route(self, event) -> CloudError | None:
        if isinstance(event, Welcome):
            if not self._welcomed.done():
                self._welcomed.set_result(event)
            self.welcome = event
            return None
        if isinstance(event, (Error, ProtocolViolation)):
            fatal = bool(event.fatal)
            stream = self._streams.get(event.request_id) if event.request_id else None
            if stream is not None and not fatal:
                stream.errors.append(event)
            else:
                self.notices.append(event)
                log.info("cloud: %s: %s", event.code, event.message)
            if fatal:
                return CloudError(event.code, event.message)
            return None
        if hasattr(event, "request_id") and event.request_id in self._streams:
            stream = self._streams[event.request_id]
            stream._put(event)
            if isinstance(event, (Done, Rejected)):
                del self._streams[event.request_id]
        return None

    def _fail_all(self, error: CloudError) -> None:
        self.closed_error = self.closed_error or error
        if not self._welcomed.done():
            self._welcomed.set_exception(error)
        for stream in self._streams.values():
            stream._queue.put_nowait(error)
        self._streams.clear()
