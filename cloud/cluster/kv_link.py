"""How the instances move a prompt's KV: the backends' export/import, when this backend has them.

A backend without ``export_kv``/``import_kv`` gives no exporter/importer: the prefill instance then sends
no KV and the decode instance re-prefills the tokens itself (the designed fallback, token-exact too).
"""

from __future__ import annotations

from typing import Any

from pdlink.cloud.backend import Backend
from pdlink.cloud.cluster.instance_scheduler import Exporter, Importer


def kv_exporter(backend: Backend) -> Exporter | None:
    """``(backend, seq_id) -> snapshot`` when the backend exports KV, else None."""
    if not callable(getattr(backend, "export_kv", None)):
        return None
    return lambda b, seq_id: b.export_kv(seq_id)


def kv_importer(backend: Backend) -> Importer | None:
    """``(backend, snapshot) -> (seq_id, tokens held)`` when the backend imports KV, else None."""
    if not callable(getattr(backend, "import_kv", None)):
        return None

    def importer(b: Backend, snapshot: Any) -> tuple[int, int]:
        return b.import_kv(snapshot), int(snapshot.length)

    return importer
