"""The KV transfer exchange, Sans-I/O: messages, the byte runs of each layout, and the receiver's state machine.

A transfer is an ``Offer`` (the snapshot's header and layout; the receiver reserves a buffer of the header's
size and answers with a ``target`` telling the sender where payload goes), then ``Data`` messages, each
answered before the next: ``contiguous`` has one covering the whole buffer, ``block`` one per (layer, page)
covering that page's K rows and V rows. Payload rides inside the message (``inline``) or was written into
the reserved buffer by the data plane (shared memory, Mooncake) before the message. After the last one
the receiver checks the whole buffer's checksum: ``done``, else ``failed``.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol

import msgspec
import numpy as np

from pdlink.cloud.kv.snapshot import KVHeader, KVSnapshot, KVSnapshotError
from pdlink.cloud.kv.transfer import Layout, Transfer, TransferError, TransferStatus

DEFAULT_MAX_BYTES = 4 << 30


class Offer(msgspec.Struct, tag="offer", frozen=True):
    transfer_id: str
    layout: str
    header: KVHeader


class Data(msgspec.Struct, tag="data", frozen=True):
    transfer_id: str
    index: int
    inline: bool


class Reply(msgspec.Struct, frozen=True):
    ok: bool
    error: str = ""
    target: dict = {}


MESSAGE = msgspec.json.Decoder(Offer | Data)
REPLY = msgspec.json.Decoder(Reply)
encode = msgspec.json.encode


def message_runs(header: KVHeader, layout: Layout) -> list[list[tuple[int, int]]]:
    """Per data message, the ``(offset, nbytes)`` runs of the contiguous buffer it carries."""
    if layout is Layout.CONTIGUOUS:
        return [[(0, header.nbytes)]]
    n, ps = len(header.token_ids), header.page_size
    row = header.num_kv_heads * header.head_dim * header.itemsize
    out = []
    for layer in range(header.num_layers):
        for start in range(0, n, ps):
            size = min(ps, n - start) * row
            k_off = (layer * 2 * n + start) * row
            out.append([(k_off, size), (k_off + n * row, size)])
    return out


class Plane(Protocol):
    """Where a receiver reserves a transfer's buffer (its memory is what the sender writes or sends into).
    A plane whose buffers stay valid after ``release`` sets ``buffers_outlive_release = True`` (no copy)."""

    def reserve(self, transfer_id: str, nbytes: int) -> tuple[memoryview, dict]: ...

    def release(self, transfer_id: str) -> None: ...


class _Incoming:
    def __init__(self, cell: Transfer, header: KVHeader, layout: Layout, buffer: memoryview):
        self.cell, self.header, self.buffer = cell, header, buffer
        self.runs = message_runs(header, layout)
        self.next_index = 0


class ReceiverCore:
    """Receiver state (thread-safe; no I/O): ``handle`` one decoded message, ``take`` a finished snapshot."""

    def __init__(self, plane: Plane, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.plane, self.max_bytes = plane, max_bytes
        self._cells: dict[str, Transfer] = {}
        self._open: dict[str, _Incoming] = {}
        self._done: dict[str, KVSnapshot] = {}
        self._lock = threading.Lock()

    def cell(self, transfer_id: str) -> Transfer:
        with self._lock:
            return self._cells.setdefault(transfer_id, Transfer(transfer_id))

    def status(self, transfer_id: str) -> TransferStatus:
        with self._lock:
            cell = self._cells.get(transfer_id)
        return cell.status if cell else TransferStatus.PENDING

    def handle(self, msg: Offer | Data, payload: memoryview | None) -> Reply:
        try:
            return self._offer(msg) if isinstance(msg, Offer) else self._data(msg, payload)
        except (KVSnapshotError, ValueError, TransferError) as exc:
            self._fail(msg.transfer_id, str(exc))
            return Reply(ok=False, error=str(exc))

    def _offer(self, offer: Offer) -> Reply:
        header, layout = offer.header.check(), Layout.parse(offer.layout)
        if header.nbytes > self.max_bytes:
            raise ValueError(f"{header.nbytes} bytes exceed this receiver's limit of {self.max_bytes}")
        cell = self.cell(offer.transfer_id)
        with self._lock:
            if cell.status is not TransferStatus.PENDING or offer.transfer_id in self._open:
                raise TransferError(f"transfer id {offer.transfer_id!r} was used already")
            buffer, target = self.plane.reserve(offer.transfer_id, header.nbytes)
            self._open[offer.transfer_id] = _Incoming(cell, header, layout, buffer)
        cell.start()
        return Reply(ok=True, target=target)

    def _data(self, data: Data, payload: memoryview | None) -> Reply:
        with self._lock:
            inc = self._open.get(data.transfer_id)
        if inc is None:
            raise TransferError(f"no open transfer {data.transfer_id!r} (offer first)")
        if data.index != inc.next_index:
            raise TransferError(f"message {data.index} arrived, {inc.next_index} was expected")
        runs = inc.runs[data.index]
        if data.inline:
            if payload is None or payload.nbytes != sum(n for _, n in runs):
                raise TransferError(f"message {data.index} carries {0 if payload is None else payload.nbytes} bytes, "
                                    f"{sum(n for _, n in runs)} expected")
            at = 0
            for off, n in runs:
                inc.buffer[off:off + n] = payload[at:at + n]
                at += n
        inc.next_index += 1
        inc.cell.nbytes += sum(n for _, n in runs)
        inc.cell.messages += 1
        if inc.next_index == len(inc.runs):
            self._complete(data.transfer_id, inc)
        return Reply(ok=True)

    def _complete(self, transfer_id: str, inc: _Incoming) -> None:
        snap = KVSnapshot.from_payload(inc.header, inc.buffer)  # checks size and checksum
        if not getattr(self.plane, "buffers_outlive_release", False):
            snap = KVSnapshot(snap.header, snap.data.copy())  # own the bytes: the plane's buffer goes away
        with self._lock:
            self._open.pop(transfer_id, None)
            self._done[transfer_id] = snap
        self.plane.release(transfer_id)
        inc.cell.finish()

    def _fail(self, transfer_id: str, error: str) -> None:
        with self._lock:
            inc = self._open.pop(transfer_id, None)
            cell = self._cells.setdefault(transfer_id, Transfer(transfer_id))
        if inc is not None:
            self.plane.release(transfer_id)
        cell.finish(error)

    def take(self, transfer_id: str, timeout: float) -> KVSnapshot:
        """Wait for the transfer, then hand its snapshot over and forget it."""
        cell = self.cell(transfer_id)
        try:
            cell.wait(timeout)
        except TransferError:
            self.discard(transfer_id)
            raise
        with self._lock:
            self._cells.pop(transfer_id, None)
            return self._done.pop(transfer_id)

    def discard(self, transfer_id: str) -> None:
        self._fail(transfer_id, "discarded by the receiver")
        with self._lock:
            self._cells.pop(transfer_id, None)
            self._done.pop(transfer_id, None)

    def close(self) -> None:
        with self._lock:
            ids = list(self._cells)
        for tid in ids:
            self._fail(tid, "receiver closed")


def send_steps(snapshot: KVSnapshot, layout: Layout, transfer_id: str,
               request: Callable[[bytes, memoryview | None], Reply], writer_for: Callable[[dict], "Writer"],
               cell: Transfer) -> None:
    """Run one transfer as the sender: ``request`` sends a control message (+ inline payload) and returns
    the reply; ``writer_for(target)`` gives the data plane writer. Raises ``TransferError`` on a refusal."""
    reply = request(encode(Offer(transfer_id, layout.value, snapshot.header)), None)
    if not reply.ok:
        raise TransferError(f"receiver refused the offer: {reply.error}")
    cell.start()
    source = memoryview(np.ascontiguousarray(snapshot.data)).cast("B")
    with writer_for(reply.target) as writer:
        for index, runs in enumerate(message_runs(snapshot.header, layout)):
            payload = writer.write(source, runs)
            reply = request(encode(Data(transfer_id, index, payload is not None)), payload)
            if not reply.ok:
                raise TransferError(f"receiver refused message {index}: {reply.error}")
            cell.nbytes += sum(n for _, n in runs)
            cell.messages += 1


class Writer(Protocol):
    """Sender side of a data plane: ``write`` puts runs of ``source`` where the receiver reads them and
    returns None, or returns the bytes to send inline."""

    def write(self, source: memoryview, runs: list[tuple[int, int]]) -> memoryview | None: ...

    def __enter__(self) -> "Writer": ...

    def __exit__(self, *exc) -> None: ...
