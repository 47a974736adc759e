import importlib.util
import multiprocessing as mp

import msgspec
import numpy as np
import pytest

from pdlink.cloud.kv import (KVSnapshot, Layout, TransferError, TransferStatus, open_receiver, open_sender)
from pdlink.cloud.kv.protocol import Data, Offer, ReceiverCore, message_runs
from pdlink.cloud.kv.zmq_transport import InlinePlane

HAS_MOONCAKE = importlib.util.find_spec("mooncake") is not None
TRANSPORTS = ["shm", "tcp"] + (["mooncake"] if HAS_MOONCAKE else [])
LAYOUTS = [Layout.CONTIGUOUS, Layout.BLOCK]


def make(n=45, seed=0, layers=3):
    data = np.random.default_rng(seed).standard_normal((layers, 2, n, 2, 8)).astype(np.float32)
    return KVSnapshot.build(model_id="m", token_ids=range(n), data=data, page_size=16)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_snapshot_arrives_intact_in_threads(transport, layout):
    snap = make()
    with open_receiver(transport) as receiver:
        sent = open_sender(transport).send(receiver.address, "t1", snap, layout, timeout=10)
        got = receiver.wait("t1", timeout=10)
        sent.wait(timeout=10)
    assert np.array_equal(got.data, snap.data) and got.header == snap.header
    assert sent.status is TransferStatus.DONE
    pages = -(-snap.num_tokens // 16)
    assert sent.messages == (1 if layout is Layout.CONTIGUOUS else 3 * pages)
    assert sent.nbytes == snap.data.nbytes


def _send_from_child(transport, address, layout, queue):
    snap = make(seed=7)
    transfer = open_sender(transport).send(address, "child", snap, layout, timeout=20)
    try:
        transfer.wait(timeout=30)
        queue.put(("done", transfer.messages))
    except (TransferError, TimeoutError) as exc:
        queue.put(("failed", str(exc)))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_snapshot_arrives_intact_from_another_process(transport, layout):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with open_receiver(transport) as receiver:
        child = ctx.Process(target=_send_from_child, args=(transport, receiver.address, layout, queue))
        child.start()
        try:
            got = receiver.wait("child", timeout=60)
            outcome = queue.get(timeout=60)
        finally:
            child.join(timeout=30)
    assert outcome[0] == "done", outcome
    assert np.array_equal(got.data, make(seed=7).data)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_corrupted_payload_fails_on_both_sides(transport, layout):
    snap = make()
    snap.data[1, 1, 3, 0, 0] += 1.0  # after the checksum was taken: the payload no longer matches it
    with open_receiver(transport) as receiver:
        sent = open_sender(transport).send(receiver.address, "bad", snap, layout, timeout=10)
        with pytest.raises(TransferError, match="checksum mismatch"):
            sent.wait(timeout=10)
        assert receiver.status("bad") is TransferStatus.FAILED
        with pytest.raises(TransferError, match="checksum mismatch"):
            receiver.wait("bad", timeout=1)


def test_unreachable_receiver_fails_within_the_timeout():
    sent = open_sender("tcp").send("tcp://127.0.0.1:9", "lost", make(), Layout.CONTIGUOUS, timeout=0.3)
    with pytest.raises(TransferError, match="no answer"):
        sent.wait(timeout=10)
    assert sent.status is TransferStatus.FAILED


def test_receiver_wait_times_out_and_unknown_ids_are_pending():
    with open_receiver("tcp") as receiver:
        assert receiver.status("nobody") is TransferStatus.PENDING
        with pytest.raises(TimeoutError):
            receiver.wait("nobody", timeout=0.05)


def test_sender_refuses_an_address_of_another_transport_and_bad_arguments():
    with pytest.raises(ValueError, match="ipc://"):
        open_sender("shm").send("tcp://127.0.0.1:1", "x", make())
    with pytest.raises(ValueError, match="layout"):
        open_sender("tcp").send("tcp://127.0.0.1:1", "x", make(), "pages")
    with pytest.raises(ValueError, match="transport"):
        open_receiver("carrier-pigeon")


def test_duplicate_transfer_id_is_refused():
    snap = make()
    with open_receiver("tcp") as receiver:
        open_sender("tcp").send(receiver.address, "dup", snap, timeout=10).wait(timeout=10)
        again = open_sender("tcp").send(receiver.address, "dup", snap, timeout=10)
        with pytest.raises(TransferError, match="used already"):
            again.wait(timeout=10)


# ------------------------------------------------------------------ the Sans-I/O core


def test_core_status_moves_pending_transferring_done():
    snap, core = make(n=20), ReceiverCore(InlinePlane())
    source = memoryview(snap.data).cast("B")
    assert core.status("a") is TransferStatus.PENDING
    assert core.handle(Offer("a", "block", snap.header), None).ok
    assert core.status("a") is TransferStatus.TRANSFERRING
    runs = message_runs(snap.header, Layout.BLOCK)
    for i, msg_runs in enumerate(runs):
        payload = memoryview(b"".join(source[o:o + n] for o, n in msg_runs))
        assert core.handle(Data("a", i, True), payload).ok
        expected = TransferStatus.DONE if i == len(runs) - 1 else TransferStatus.TRANSFERRING
        assert core.status("a") is expected
    assert np.array_equal(core.take("a", 1).data, snap.data)


def test_block_runs_cover_the_buffer_exactly_once():
    header = make(n=45).header
    runs = [r for msg in message_runs(header, Layout.BLOCK) for r in msg]
    covered = np.zeros(header.nbytes, np.int8)
    for off, n in runs:
        covered[off:off + n] += 1
    assert (covered == 1).all()
    assert message_runs(header, Layout.CONTIGUOUS) == [[(0, header.nbytes)]]


def test_core_refuses_bad_sequences_of_messages():
    snap, core = make(n=20), ReceiverCore(InlinePlane(), max_bytes=1 << 20)
    assert "offer first" in core.handle(Data("x", 0, True), memoryview(b"")).error
    assert core.handle(Offer("a", "block", snap.header), None).ok
    reply = core.handle(Data("a", 1, True), memoryview(b"\0" * 10))
    assert not reply.ok and "0 was expected" in reply.error
    assert core.status("a") is TransferStatus.FAILED
    assert core.handle(Offer("b", "contiguous", snap.header), None).ok
    reply = core.handle(Data("b", 0, True), memoryview(b"\0" * 10))
    assert not reply.ok and "expected" in reply.error
    big = msgspec.structs.replace(snap.header, token_ids=list(range(100_000)))
    assert "limit" in core.handle(Offer("c", "contiguous", big), None).error
    assert "layout" in core.handle(Offer("d", "pages", snap.header), None).error


def test_receiver_answers_garbage_without_dying():
    import zmq

    with open_receiver("tcp") as receiver:
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(receiver.address)
        sock.send(b"{not json")
        assert b"bad control message" in sock.recv()
        sock.close()
        sent = open_sender("tcp").send(receiver.address, "after", make(), timeout=10)
        sent.wait(timeout=10)


class _FullPlane(InlinePlane):
    """Runs out of memory on every second reservation."""

    def __init__(self):
        self.calls = 0

    def reserve(self, transfer_id, nbytes):
        self.calls += 1
        if self.calls % 2:
            raise OSError("no space left for the buffer")
        return super().reserve(transfer_id, nbytes)


def test_a_receiver_side_error_fails_that_transfer_and_the_receiver_keeps_serving():
    from pdlink.cloud.kv.zmq_transport import ZmqReceiver

    snap = make()
    with ZmqReceiver.bind_tcp("127.0.0.1", 0, _FullPlane()) as receiver:
        failed = open_sender("tcp").send(receiver.address, "first", snap, timeout=10)
        with pytest.raises(TransferError, match="no space left"):
            failed.wait(timeout=10)
        open_sender("tcp").send(receiver.address, "second", snap, timeout=10).wait(timeout=10)
        assert np.array_equal(receiver.wait("second", timeout=5).data, snap.data)
