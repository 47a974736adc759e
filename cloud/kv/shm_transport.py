"""The in-host KV transport: payload through ``multiprocessing.shared_memory``, control over a local socket.

The receiver reserves one shared-memory segment of the snapshot's size when the offer arrives and names
it in its reply; the sender writes the runs of each message straight into it (one copy, no socket in
the data path); the receiver copies the checked bytes out and frees the segment.
"""

from __future__ import annotations

import threading
from multiprocessing import resource_tracker, shared_memory

from pdlink.cloud.kv.transfer import TransferError
from pdlink.cloud.kv.zmq_transport import ZmqSender


_ATTACH_LOCK = threading.Lock()


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open an existing segment without tracking it: Python < 3.13 registers attached segments with the
    resource tracker too, which would unlink the receiver's segment when this process exits."""
    with _ATTACH_LOCK:
        register = resource_tracker.register
        resource_tracker.register = lambda *args: None
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register


class ShmPlane:
    """Receiver side: a segment per open transfer."""

    buffers_outlive_release = False

    def __init__(self):
        self._segments: dict[str, shared_memory.SharedMemory] = {}
        self._closing: list[shared_memory.SharedMemory] = []

    def reserve(self, transfer_id: str, nbytes: int) -> tuple[memoryview, dict]:
        shm = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
        self._segments[transfer_id] = shm
        return shm.buf[:nbytes], {"shm": shm.name}

    def release(self, transfer_id: str) -> None:
        shm = self._segments.pop(transfer_id, None)
        if shm is not None:
            shm.unlink()  # the name goes now; the memory when the last view of it is gone
            self._closing.append(shm)
            self._close_unused()

    def _close_unused(self) -> None:
        still = []
        for shm in self._closing:
            try:
                shm.close()
            except BufferError:  # a view of the buffer is still alive somewhere; try again later
                still.append(shm)
        self._closing = still

    def close(self) -> None:
        for tid in list(self._segments):
            self.release(tid)
        self._close_unused()


class _ShmWriter:
    def __init__(self, name: str):
        try:
            self.shm = _attach(name)
        except FileNotFoundError as exc:
            raise TransferError(f"the receiver's shared memory {name!r} is gone (is it on this host?)") from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shm.close()

    def write(self, source: memoryview, runs: list[tuple[int, int]]) -> None:
        buf = self.shm.buf
        for off, n in runs:
            if off + n > buf.nbytes:
                raise TransferError(f"the receiver's segment holds {buf.nbytes} bytes, {off + n} needed")
            buf[off:off + n] = source[off:off + n]
        del buf
        return None


class ShmSender(ZmqSender):
    """Sends to receivers made by ``open_receiver("shm")`` on this host."""

    schemes = ("ipc://",)

    def writer_for(self, target: dict) -> _ShmWriter:
        if "shm" not in target:
            raise TransferError("the receiver did not offer shared memory: use its own transport")
        return _ShmWriter(str(target["shm"]))
