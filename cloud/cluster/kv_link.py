"""How the instances move a prompt's KV: the backends' ``export_kv``/``import_kv`` (``cloud/kv``'s contiguous
:class:`~pdlink.cloud.kv.snapshot.KVSnapshot`, checksummed), carried from the prefill actor to the decode actor
through Ray's object store (``ray.put`` on one side, resolved on the other: the gateway never holds the
bytes; across nodes Ray moves the object). In one process the snapshot itself is handed over.

A backend without KV transfer gives no exporter/importer: the prefill instance then sends no KV and the decode
instance re-prefills the tokens itself, which is also what happens when a transfer fails (object lost,
checksum mismatch, tokens or model that do not match): the designed fallback, token-exact too.
"""

from __future__ import annotations

import sys
from typing import Any

from pdlink.cloud.backend import Backend
from pdlink.cloud.cluster.instance_scheduler import Exporter, Importer


def kv_exporter(backend: Backend) -> Exporter | None:
    """``(backend, seq_id) -> KVSnapshot`` when the backend exports KV, else None."""
    if not getattr(backend, "supports_kv_transfer", False):
        return None
    return lambda b, seq_id: b.export_kv(seq_id)


def kv_importer(backend: Backend) -> Importer | None:
    """``(backend, snapshot) -> (seq_id, token ids it holds)`` after checking the checksum, else None."""
    if not getattr(backend, "supports_kv_transfer", False):
        return None

    def importer(b: Backend, snapshot: Any) -> tuple[int, tuple[int, ...]]:
        snapshot.verify()  # KVSnapshotError on a checksum mismatch: the caller re-prefills
        return b.import_kv(snapshot), tuple(snapshot.header.token_ids)

    return importer


def _ray():
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def ship(snapshot: Any) -> Any:
    """What goes into the prefill result: an object-store reference on Ray, else the snapshot itself."""
    ray = _ray()
    return ray.put(snapshot) if ray is not None and snapshot is not None else snapshot


async def receive(kv: Any) -> tuple[Any, str]:
    """The snapshot behind what ``ship`` made, or (None, why) when it cannot be had (the decode re-prefills)."""
    ray = _ray()
    if ray is None or not isinstance(kv, ray.ObjectRef):
        return kv, ""
    try:
        return await kv, ""
    except Exception as exc:  # the object is lost (its owner died) or cannot be read
        return None, f"KV transfer failed: {exc}"
