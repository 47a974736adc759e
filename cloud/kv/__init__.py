"""KV cache export/import and transfer between cloud instances (P/D-Serve's prefill -> decode hand-off).

How to use it::

    from pdlink.cloud.kv import Layout, TransferError, open_receiver, open_sender

    # decode instance (the receiver), any process on this host ("shm") or any host ("tcp"):
    receiver = open_receiver("tcp", host="0.0.0.0", port=0)    # or open_receiver("shm")
    address = receiver.address                                   # hand this to the prefill side

    # prefill instance (the sender), after prefilling sequence `seq` on its backend:
    snapshot = backend.export_kv(seq)                            # KVSnapshot: header + contiguous array
    transfer = open_sender("tcp").send(address, "req-42", snapshot, Layout.CONTIGUOUS)
    transfer.status                                              # pending / transferring / done / failed
    transfer.wait(timeout=30)                                    # raises TransferError when it failed

    # decode instance:
    try:
        snap = receiver.wait("req-42", timeout=30)               # checked (xxh3-64) snapshot
        seq = backend.import_kv(snap)                            # a fresh sequence holding that KV
        logits = backend.decode([seq], [first_token])            # continue where the prefill stopped
    except (TransferError, TimeoutError):
        ...                                                      # re-prefill snap's prompt instead

``pdlink.cloud.kv.landing.land_sequence(backend, receiver, transfer_id, token_ids, timeout=...)`` does the
decode side's part in one call: import when the transfer arrives intact for those tokens, else re-prefill
them (its ``Landing.source`` says which, ``error`` why).

The snapshot covers ``snapshot.header.token_ids`` (the tokens whose KV it holds); the next token to feed
(the prefill's first sampled token) travels with the caller's own request message. Both sides of a
transfer must run the same model (``model_id``, layers, kv heads, head dim and dtype are checked on
import). Transports: ``shm`` (same host; control over a local socket, payload through
``multiprocessing.shared_memory``) and ``tcp`` (ZeroMQ; see the README for why not Mooncake).
"""

from pdlink.cloud.kv.snapshot import KVHeader, KVSnapshot, KVSnapshotError, checksum_of
from pdlink.cloud.kv.transfer import (TRANSPORTS, KVReceiver, KVSender, Layout, Transfer, TransferError,
                                      TransferStatus, open_receiver, open_sender)

__all__ = ["KVHeader", "KVReceiver", "KVSender", "KVSnapshot", "KVSnapshotError", "Layout", "TRANSPORTS", "Transfer",
           "TransferError", "TransferStatus", "checksum_of", "open_receiver", "open_sender"]
