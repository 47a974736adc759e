"""The network KV transport on Mooncake's transfer engine (``mooncake-transfer-engine``, its TCP protocol).

Control messages travel over ZeroMQ as for every transport; the payload is written by Mooncake straight
from the sender's snapshot buffer into the receiver's reserved buffer (both registered with their
engines): the receiver answers an offer with its engine's segment name and the buffer's address.
Needs ``pip install mooncake-transfer-engine-non-cuda`` and the ``libibverbs1`` system library (the
wheel links it even for TCP).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from pdlink.cloud.kv.transfer import TransferError
from pdlink.cloud.kv.zmq_transport import ZmqSender

_ENGINES: dict[str, object] = {}
_LOCK = threading.Lock()


def mooncake_engine(host: str):
    """This process's Mooncake engine on ``host`` (one per host name, made on first use)."""
    with _LOCK:
        if host not in _ENGINES:
            os.environ.setdefault("GLOG_minloglevel", "2")  # Mooncake logs every connection at INFO
            try:
                from mooncake.engine import TransferEngine
            except ImportError as exc:
                raise RuntimeError("the mooncake transport needs `pip install mooncake-transfer-engine-non-cuda` "
                                   f"and `apt-get install libibverbs1` ({exc})") from exc
            engine = TransferEngine()
            if engine.initialize(host, "P2PHANDSHAKE", "tcp", "") != 0:
                raise RuntimeError(f"Mooncake's transfer engine did not start on {host}")
            _ENGINES[host] = engine
        return _ENGINES[host]


class MooncakePlane:
    """Receiver side: a registered numpy buffer per open transfer."""

    buffers_outlive_release = True

    def __init__(self, host: str):
        self.engine = mooncake_engine(host)
        self.segment = f"{host}:{self.engine.get_rpc_port()}"
        self._buffers: dict[str, np.ndarray] = {}

    def reserve(self, transfer_id: str, nbytes: int) -> tuple[memoryview, dict]:
        buf = np.empty(max(nbytes, 1), np.uint8)
        if self.engine.register_memory(buf.ctypes.data, buf.nbytes) != 0:
            raise TransferError("Mooncake could not register the receive buffer")
        self._buffers[transfer_id] = buf
        return memoryview(buf)[:nbytes], {"segment": self.segment, "addr": int(buf.ctypes.data)}

    def release(self, transfer_id: str) -> None:
        buf = self._buffers.pop(transfer_id, None)
        if buf is not None:
            self.engine.unregister_memory(buf.ctypes.data)

    def close(self) -> None:
        for tid in list(self._buffers):
            self.release(tid)


class _MooncakeWriter:
    def __init__(self, engine, segment: str, addr: int):
        self.engine, self.segment, self.addr = engine, segment, addr
        self._source: np.ndarray | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._source is not None:
            self.engine.unregister_memory(self._source.ctypes.data)

    def write(self, source: memoryview, runs: list[tuple[int, int]]) -> None:
        if self._source is None:
            self._source = np.frombuffer(source, np.uint8)
            if self.engine.register_memory(self._source.ctypes.data, self._source.nbytes) != 0:
                self._source = None
                raise TransferError("Mooncake could not register the send buffer")
        base = self._source.ctypes.data
        for off, n in runs:
            if self.engine.transfer_sync_write(self.segment, base + off, self.addr + off, n) != 0:
                raise TransferError(f"Mooncake write of {n} bytes to {self.segment} failed")
        return None


class MooncakeSender(ZmqSender):
    """Sends to receivers made by ``open_receiver("mooncake")``; ``host`` names this side's engine."""

    schemes = ("tcp://",)

    def __init__(self, host: str = "127.0.0.1"):
        self.engine = mooncake_engine(host)

    def writer_for(self, target: dict) -> _MooncakeWriter:
        if "segment" not in target or "addr" not in target:
            raise TransferError("the receiver did not offer a Mooncake buffer: use its own transport")
        return _MooncakeWriter(self.engine, str(target["segment"]), int(target["addr"]))
