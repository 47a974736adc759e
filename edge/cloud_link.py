"""The cloud side of one P/D request, seen from the device through an (emulated) network.

``CloudLink.start`` connects, sends the prefill and reads the stream in a background task; every
event reaches ``inbox`` at the time the emulated link would deliver it, in order. Nothing raises to
the caller: an unreachable, refusing, rejecting or dropping cloud becomes one ``CloudFailure`` event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pdlink.edge.emulation import NetworkEmulation, NetworkLink

_TOKEN_FRAME_BYTES = 110  # a token frame on the wire, about (JSON text + websocket header)


@dataclass(frozen=True)
class CloudFailure:
    """The cloud cannot help with this request; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class CloudTarget:
    """Where the cloud is and how to reach it."""

    url: str
    auth_token: str | None = None
    model_id: str = "smollm2-135m"
    open_timeout_s: float = 10.0
    event_timeout_s: float = 30.0
    ca_file: str | None = None


class CloudLink:
    """One request's cloud stream (see the module docstring)."""

    def __init__(self, target: CloudTarget, network: NetworkEmulation, tokenizer_hash: str):
        self.target, self.network, self.tokenizer_hash = target, network, tokenizer_hash
        self.inbox: asyncio.Queue = asyncio.Queue()
        self._down, self._up = NetworkLink(network, 0), NetworkLink(network, 1)
        self._courier_q: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.client = self.stream = None
        self.connect_s: float | None = None
        self.done = None  # the cloud's Done, once it arrived

    def start(self, *, prompt_token_ids: list[int], k: int, sampling, stop_token_ids: list[int],
              refine_keep_ratio: float = 0.0) -> None:
        """Connect and send the request in the background; ``refine_keep_ratio > 0`` asks for a refined prompt."""
        self._tasks = [asyncio.create_task(self._run(prompt_token_ids, k, sampling, stop_token_ids,
                                                     refine_keep_ratio)),
                       asyncio.create_task(self._courier())]

    async def stop(self, after_index: int) -> None:
        """Ask for no token after ``after_index`` (``-1``: cancel), over the emulated uplink."""
        await self._wait_uplink(64)
        stream = self.stream
        if stream is None:
            return
        try:
            await (stream.cancel() if after_index < 0 else stream.stop(after_index))
        except Exception:  # noqa: BLE001 -- the connection may be gone; the device does not need it
            pass

    async def wait_done(self, timeout_s: float) -> None:
        """Wait (bounded) for the cloud's Done, so its busy time is known."""
        deadline = time.perf_counter() + timeout_s
        while self.done is None and self._tasks and not self._tasks[0].done() and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Close the connection and end the background tasks."""
        if self.client is not None:
            try:
                await self.client.close()
            except Exception:  # noqa: BLE001
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    async def _run(self, prompt_ids, k, sampling, stop_ids, refine_keep_ratio) -> None:
        from pdlink.common.client import CloudClient, CloudError
        from pdlink.common.credentials import client_ssl_context
        from pdlink.common.protocol import Done, LocalProtocolError, RefineOptions, Rejected

        t0 = time.perf_counter()
        try:
            await asyncio.sleep(self.network.rtt_ms / 1000)  # TCP and websocket upgrade: one more round trip
            self.client = await CloudClient.connect(
                self.target.url, model_id=self.target.model_id, tokenizer_hash=self.tokenizer_hash,
                auth_token=self.target.auth_token, client_name="pdlink-session",
                open_timeout_s=self.target.open_timeout_s, event_timeout_s=self.target.event_timeout_s,
                ssl_context=client_ssl_context(self.target.url, self.target.ca_file))
            if not self.client.tokenizer_match:
                raise CloudError("tokenizer_mismatch", "the cloud's tokenizer differs; token ids cannot cross")
            self.connect_s = time.perf_counter() - t0
            await self._wait_uplink(8 * len(prompt_ids) + 200)
            refine = RefineOptions(keep_ratio=refine_keep_ratio) if refine_keep_ratio > 0 else None
            self.stream = await self.client.prefill(prompt_token_ids=prompt_ids, max_leading_tokens=k,
                                                    sampling=sampling, stop_token_ids=stop_ids, refine=refine)
            async for event in self.stream:
                if isinstance(event, Done):
                    self.done = event
                self._deliver(CloudFailure(f"rejected: {event.reason}") if isinstance(event, Rejected) else event)
        except CloudError as exc:
            self._deliver(CloudFailure(f"cloud_error: {exc.code}: {exc.message}"))
        except LocalProtocolError as exc:
            self._deliver(CloudFailure(f"cloud_refused_request: {exc.message}"))
        except TimeoutError:
            self._deliver(CloudFailure("cloud_timeout"))
        except OSError as exc:
            self._deliver(CloudFailure(f"cloud_unreachable: {exc.strerror or exc}"))

    def _deliver(self, event) -> None:
        now = time.perf_counter()
        self._courier_q.put_nowait((self._down.delivery_s(now, _TOKEN_FRAME_BYTES), event))

    async def _courier(self) -> None:
        while True:
            at, event = await self._courier_q.get()
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.inbox.put_nowait(event)

    async def _wait_uplink(self, nbytes: int) -> None:
        now = time.perf_counter()
        delay = self._up.delivery_s(now, nbytes) - now
        if delay > 0:
            await asyncio.sleep(delay)
