"""The KV transfer interface: a sender pushes a :class:`KVSnapshot` to a receiver's address; both sides poll a status.

Status of a transfer: ``pending`` (known, nothing moved yet) -> ``transferring`` -> ``done`` | ``failed``.
A failed transfer (checksum mismatch, peer gone, timeout, bad metadata) raises :class:`TransferError` from
``wait``: the caller re-prefills. Two layouts (:class:`Layout`): ``contiguous`` sends the whole buffer in one
message after one metadata exchange (P/D-Serve's block-free transfer); ``block`` sends it page by page
(``page_size`` tokens of one layer), each page confirmed before the next (the block-fixed baseline).
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod

from pdlink.cloud.kv.snapshot import KVSnapshot

TRANSPORTS = ("shm", "tcp", "mooncake")


class TransferStatus(str, enum.Enum):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    DONE = "done"
    FAILED = "failed"


class Layout(str, enum.Enum):
    CONTIGUOUS = "contiguous"
    BLOCK = "block"

    @classmethod
    def parse(cls, value) -> "Layout":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"layout {value!r} is not one of {', '.join(m.value for m in cls)}") from None


class TransferError(RuntimeError):
    """A transfer failed; ``str(exc)`` says why. The KV did not arrive: re-prefill."""


class Transfer:
    """The status of one transfer, safe to poll from any thread; ``wait`` blocks until it ends."""

    def __init__(self, transfer_id: str):
        self.transfer_id = transfer_id
        self._status = TransferStatus.PENDING
        self.error: str | None = None
        self.nbytes = 0
        self.messages = 0  # payload messages sent or received (1 for contiguous, one per page for block)
        self.started_s: float | None = None
        self.seconds: float | None = None  # first payload byte to done/failed
        self._cond = threading.Condition()

    @property
    def status(self) -> TransferStatus:
        return self._status

    def start(self) -> None:
        with self._cond:
            if self._status is TransferStatus.PENDING:
                self._status, self.started_s = TransferStatus.TRANSFERRING, time.perf_counter()
                self._cond.notify_all()

    def finish(self, error: str | None = None) -> None:
        """Move to ``done`` (no error) or ``failed``; a transfer that ended already keeps its status."""
        with self._cond:
            if self._status in (TransferStatus.DONE, TransferStatus.FAILED):
                return
            if self.started_s is None:
                self.started_s = time.perf_counter()
            self.seconds = time.perf_counter() - self.started_s
            self._status, self.error = (TransferStatus.FAILED, error) if error else (TransferStatus.DONE, None)
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Block until done; raises :class:`TransferError` when it failed, ``TimeoutError`` when still running."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._status in (TransferStatus.DONE, TransferStatus.FAILED), timeout):
                raise TimeoutError(f"transfer {self.transfer_id} still {self._status.value} after {timeout} s")
        if self._status is TransferStatus.FAILED:
            raise TransferError(f"transfer {self.transfer_id} failed: {self.error}")


class KVSender(ABC):
    """Pushes snapshots to receivers. ``send`` returns at once; the transfer runs on a thread of its own."""

    @abstractmethod
    def send(self, address: str, transfer_id: str, snapshot: KVSnapshot, layout: Layout | str = Layout.CONTIGUOUS,
             *, timeout: float = 60.0) -> Transfer:
        """Start sending ``snapshot`` to the receiver at ``address`` under ``transfer_id`` (unique per
        receiver). Poll or ``wait`` the returned :class:`Transfer`; every step is bounded by ``timeout``."""

    def close(self) -> None:
        """Release what the sender holds (running transfers finish or fail first)."""


class KVReceiver(ABC):
    """Accepts snapshots at :attr:`address` (give it to senders; it works from other processes)."""

    address: str

    @abstractmethod
    def status(self, transfer_id: str) -> TransferStatus:
        """The transfer's status here; ``pending`` for one not seen yet."""

    @abstractmethod
    def wait(self, transfer_id: str, timeout: float) -> KVSnapshot:
        """Block until the transfer is done and hand its checked snapshot over (once: it is then forgotten).
        Raises :class:`TransferError` when it failed, ``TimeoutError`` when it has not finished in time."""

    @abstractmethod
    def discard(self, transfer_id: str) -> None:
        """Forget a transfer (a running one fails); unknown ids are ignored."""

    @abstractmethod
    def close(self) -> None:
        """Stop accepting; running transfers fail."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_receiver(transport: str, *, host: str = "127.0.0.1", port: int = 0) -> KVReceiver:
    """A receiver: ``shm`` (same host: payload through shared memory, control on a local socket), ``tcp``
    (payload inside ZeroMQ messages) or ``mooncake`` (payload by Mooncake's engine over TCP); the last two
    listen on ``host:port`` (0 = a free port; ``host`` must be an address senders can reach)."""
    from pdlink.cloud.kv.zmq_transport import ZmqReceiver

    if transport == "shm":
        return ZmqReceiver.bind_local()
    if transport == "tcp":
        return ZmqReceiver.bind_tcp(host, port)
    if transport == "mooncake":
        from pdlink.cloud.kv.mooncake_transport import MooncakePlane

        return ZmqReceiver.bind_tcp(host, port, MooncakePlane(host))
    raise ValueError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")


def open_sender(transport: str, *, host: str = "127.0.0.1") -> KVSender:
    """A sender for receivers of the same ``transport``; ``host`` is this side's address (``mooncake``)."""
    if transport == "shm":
        from pdlink.cloud.kv.shm_transport import ShmSender

        return ShmSender()
    if transport == "tcp":
        from pdlink.cloud.kv.zmq_transport import TcpSender

        return TcpSender()
    if transport == "mooncake":
        from pdlink.cloud.kv.mooncake_transport import MooncakeSender

        return MooncakeSender(host)
    raise ValueError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
