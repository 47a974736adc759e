"""The fake backend with KV export/import: its "KV" is the token ids themselves ([1, 2, n, 1, 1] float32)."""

from __future__ import annotations

import numpy as np

from pdlink.cloud.kv import KVSnapshot
from tests.unit.cloud.fake_backend import FakeBackend


class KVFakeBackend(FakeBackend):
    supports_kv_transfer = True

    def export_kv(self, seq_id: int) -> KVSnapshot:
        ids = self.seqs[seq_id]
        data = np.broadcast_to(np.asarray(ids, np.float32)[None, None, :, None, None], (1, 2, len(ids), 1, 1))
        return KVSnapshot.build(model_id=self.model_id, token_ids=ids, data=data, page_size=4)

    def import_kv(self, snapshot: KVSnapshot) -> int:
        if snapshot.header.model_id != self.model_id:
            raise ValueError(f"KV of {snapshot.header.model_id} does not fit {self.model_id}")
        seq_id = self.add_sequence()
        self.seqs[seq_id] = [int(t) for t in snapshot.data[0, 0, :, 0, 0]]
        return seq_id
