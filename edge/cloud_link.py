"""The cloud side of one P/D request, seen from the device.

``CloudLink.start`` connects, sends the prefill request and reads the stream in a background task; every
event lands in ``inbox`` in order: the cloud's ``Welcome`` first, then its ``Accepted`` / ``Token`` /
``RefinedPrompt`` / ``Done`` messages. Nothing raises to the caller: an unreachable, refusing, rejecting
or dropping cloud becomes one ``CloudFailure`` event. A slower network is emulated from outside
(``pdlink.edge.emulation.EmulatedCloudLink``), never here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pdlink.common.client import CloudClient, CloudError
from pdlink.common.credentials import client_ssl_context
from pdlink.common.models import DEFAULT_MODEL
from pdlink.common.protocol import Done, LocalProtocolError, Rejected
from pdlink.edge.fallback import Fallback


@dataclass(frozen=True)
class CloudFailure:
    """The cloud cannot help with this request; ``reason`` says why (a ``Fallback`` string)."""

    reason: str


@dataclass(frozen=True)
class CloudTarget:
    """Where the cloud is and how to reach it."""

    url: str
    auth_token: str | None = None
    model_id: str = DEFAULT_MODEL
    open_timeout_s: float = 10.0
    event_timeout_s: float = 30.0
    ca_file: str | None = None


class CloudLink:
    """One request's cloud stream (see the module docstring)."""

    client_name = "pdlink-session"

    def __init__(self, target: CloudTarget, tokenizer_hash: str):
        """``tokenizer_hash``: the device's tokenizer ("" without one: the cloud tokenizes, texts cross)."""
        self.target, self.tokenizer_hash = target, tokenizer_hash
        self.inbox: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.client: CloudClient | None = None
        self.stream = None
        self.connect_s: float | None = None
        self.done: Done | None = None  # the cloud's Done, once it arrived

    @property
    def welcome(self):
        """The cloud's handshake answer (None before it, or when it never came)."""
        return self.client.welcome if self.client is not None else None

    def start(self, **request) -> None:
        """Connect and send the request in the background; ``request``: ``CloudClient.prefill``'s arguments."""
        self._task = asyncio.create_task(self._run(request))

    async def stop(self, after_index: int) -> None:
        """Ask for no token after ``after_index`` (``-1``: cancel)."""
        await self._uplink(64)
        stream = self.stream
        if stream is None:
            return
        try:
            await (stream.cancel() if after_index < 0 else stream.stop(after_index))
        except Exception:  # noqa: BLE001 -- the connection may be gone; the device does not need it
            pass

    async def wait_done(self, timeout_s: float) -> None:
        """Wait (bounded) for the cloud's Done, so its busy time is known."""
        if self._task is not None and self.done is None:
            await asyncio.wait([self._task], timeout=timeout_s)

    async def close(self) -> None:
        """Close the connection and end the background task."""
        if self.client is not None:
            try:
                await self.client.close()
            except Exception:  # noqa: BLE001
                pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    async def _run(self, request: dict) -> None:
        t0 = time.perf_counter()
        try:
            await self._connecting()
            self.client = await CloudClient.connect(
                self.target.url, model_id=self.target.model_id, tokenizer_hash=self.tokenizer_hash,
                auth_token=self.target.auth_token, client_name=self.client_name,
                open_timeout_s=self.target.open_timeout_s, event_timeout_s=self.target.event_timeout_s,
                ssl_context=client_ssl_context(self.target.url, self.target.ca_file))
            if self.tokenizer_hash and not self.client.tokenizer_match:
                raise CloudError("tokenizer_mismatch", "the cloud's tokenizer differs; token ids cannot cross")
            self.connect_s = time.perf_counter() - t0
            self._deliver(self.client.welcome)
            await self._uplink(8 * len(request.get("prompt_token_ids") or ()) + 200)
            self.stream = await self.client.prefill(**request)
            async for event in self.stream:
                if isinstance(event, Done):
                    self.done = event
                self._deliver(CloudFailure(Fallback.REJECTED.because(event.reason)) if isinstance(event, Rejected)
                              else event)
        except CloudError as exc:
            self._deliver(CloudFailure(Fallback.CLOUD_ERROR.because(f"{exc.code}: {exc.message}")))
        except LocalProtocolError as exc:
            self._deliver(CloudFailure(Fallback.CLOUD_REFUSED_REQUEST.because(exc.message)))
        except TimeoutError:
            self._deliver(CloudFailure(Fallback.CLOUD_TIMEOUT.because()))
        except OSError as exc:
            self._deliver(CloudFailure(Fallback.CLOUD_UNREACHABLE.because(str(exc.strerror or exc))))

    def _deliver(self, event) -> None:
        """Hand an event to the session (an emulated network delays it)."""
        self.inbox.put_nowait(event)

    async def _connecting(self) -> None:
        """Before the connection opens (an emulated network waits a round trip here)."""

    async def _uplink(self, nbytes: int) -> None:
        """Before ``nbytes`` leave for the cloud (an emulated network waits for its link here)."""
