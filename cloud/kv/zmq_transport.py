"""The asyncio-free shells of the KV exchange on ZeroMQ: one receiver thread (ROUTER), one thread per send (REQ).

The control messages of :mod:`pdlink.cloud.kv.protocol` always travel over ZeroMQ: ``tcp://`` between hosts,
``ipc://`` (a local socket) on one host. The payload travels inline (:class:`TcpSender`), through shared
memory (:mod:`pdlink.cloud.kv.shm_transport`) or through Mooncake's transfer engine
(:mod:`pdlink.cloud.kv.mooncake_transport`), as the receiver's plane says.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid

import msgspec
import zmq

from pdlink.cloud.kv.protocol import DEFAULT_MAX_BYTES, MESSAGE, REPLY, Plane, ReceiverCore, Reply, encode, send_steps
from pdlink.cloud.kv.snapshot import KVSnapshot
from pdlink.cloud.kv.transfer import KVReceiver, KVSender, Layout, Transfer, TransferError, TransferStatus

POLL_MS = 100
log = logging.getLogger(__name__)


class InlinePlane:
    """Payload inside the data messages; the receiver's buffer is ordinary memory."""

    buffers_outlive_release = True

    def reserve(self, transfer_id: str, nbytes: int) -> tuple[memoryview, dict]:
        return memoryview(bytearray(nbytes)), {}

    def release(self, transfer_id: str) -> None:
        pass

    def close(self) -> None:
        pass


class ZmqReceiver(KVReceiver):
    """Serves :class:`ReceiverCore` on a ROUTER socket from a daemon thread; see :func:`open_receiver`."""

    def __init__(self, endpoint: str, plane: Plane, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.plane = plane
        self.core = ReceiverCore(plane, max_bytes=max_bytes)
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_bytes + (1 << 20))
        self._sock.bind(endpoint)
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ipc_path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"kv-recv {self.address}", daemon=True)
        self._thread.start()

    @classmethod
    def bind_tcp(cls, host: str, port: int, plane: Plane | None = None, **kw) -> "ZmqReceiver":
        if not 0 <= port < 65536:
            raise ValueError(f"port {port} outside 0..65535 (0 = a free one)")
        endpoint = f"tcp://{host}:{port}" if port else f"tcp://{host}:*"
        return cls(endpoint, plane or InlinePlane(), **kw)

    @classmethod
    def bind_local(cls, **kw) -> "ZmqReceiver":
        from pdlink.cloud.kv.shm_transport import ShmPlane

        path = os.path.join(tempfile.gettempdir(), f"pdlink-kv-{uuid.uuid4().hex[:12]}.sock")
        return cls(f"ipc://{path}", ShmPlane(), **kw)

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._closed.is_set():
            if not poller.poll(POLL_MS):
                continue
            frames = self._sock.recv_multipart(copy=False)
            if len(frames) < 3:
                continue  # not a REQ envelope: nobody to answer
            self._sock.send_multipart([frames[0], b"", encode(self._answer(frames[2:]))])

    def _answer(self, frames) -> Reply:
        try:
            msg = MESSAGE.decode(frames[0].bytes)
        except msgspec.DecodeError as exc:
            return Reply(ok=False, error=f"bad control message: {exc}")
        payload = memoryview(frames[1].buffer).cast("B") if len(frames) > 1 else None
        try:
            return self.core.handle(msg, payload)
        except Exception as exc:  # noqa: BLE001  (the serving thread must live: fail this transfer only)
            log.exception("KV receiver: transfer %s failed", msg.transfer_id)
            self.core.discard(msg.transfer_id)
            return Reply(ok=False, error=f"receiver error: {exc!r}")

    def status(self, transfer_id: str) -> TransferStatus:
        return self.core.status(transfer_id)

    def wait(self, transfer_id: str, timeout: float) -> KVSnapshot:
        return self.core.take(transfer_id, timeout)

    def discard(self, transfer_id: str) -> None:
        self.core.discard(transfer_id)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close(linger=0)
        self.core.close()
        getattr(self.plane, "close", lambda: None)()
        if self._ipc_path and os.path.exists(self._ipc_path):
            os.unlink(self._ipc_path)


class ZmqSender(KVSender):
    """Runs :func:`send_steps` on a thread per transfer over a REQ socket; subclasses pick the data plane."""

    schemes: tuple[str, ...] = ("tcp://",)

    def writer_for(self, target: dict):
        raise NotImplementedError

    def send(self, address: str, transfer_id: str, snapshot: KVSnapshot, layout: Layout | str = Layout.CONTIGUOUS,
             *, timeout: float = 60.0) -> Transfer:
        layout = Layout.parse(layout)
        if not address.startswith(self.schemes):
            raise ValueError(f"{type(self).__name__} sends to {' or '.join(self.schemes)} addresses, got {address!r}")
        if not transfer_id:
            raise ValueError("transfer_id must not be empty")
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        cell = Transfer(transfer_id)
        threading.Thread(target=self._run, args=(address, transfer_id, snapshot, layout, timeout, cell),
                         name=f"kv-send {transfer_id}", daemon=True).start()
        return cell

    def _run(self, address, transfer_id, snapshot, layout, timeout, cell: Transfer) -> None:
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        sock.connect(address)

        def request(control: bytes, payload) -> Reply:
            sock.send_multipart([control] if payload is None else [control, payload], copy=False)
            return REPLY.decode(sock.recv())

        try:
            send_steps(snapshot, layout, transfer_id, request, self.writer_for, cell)
            cell.finish()
        except zmq.Again:
            cell.finish(f"no answer from {address} within {timeout} s")
        except (TransferError, zmq.ZMQError, msgspec.DecodeError, OSError, ValueError) as exc:
            cell.finish(str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001  (a thread boundary: the caller learns it from the status)
            log.exception("KV sender: transfer %s failed", transfer_id)
            cell.finish(f"sender error: {exc!r}")
        finally:
            sock.close(linger=0)


class _InlineWriter:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def write(self, source: memoryview, runs: list[tuple[int, int]]) -> memoryview:
        if len(runs) == 1:
            off, n = runs[0]
            return source[off:off + n]  # zero-copy: the whole contiguous buffer in one message
        return memoryview(b"".join(source[off:off + n] for off, n in runs))


class TcpSender(ZmqSender):
    """Payload inline in ZeroMQ messages over TCP."""

    schemes = ("tcp://",)

    def writer_for(self, target: dict) -> _InlineWriter:
        if target:
            raise TransferError(f"the receiver expects another data plane ({sorted(target)}): use its transport")
        return _InlineWriter()
