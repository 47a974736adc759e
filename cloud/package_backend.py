"""The cloud backend on a compiled ``host`` package: the device's own :class:`~pdlink.edge.engine.Engine`.

Serving the very package a device runs makes cloud and device tokens equal by construction. It runs on
the host CPU, since the TVM wheel used here has no CUDA runtime; a TVM build with one would make it a
path to a GPU as well.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pdlink.cloud.backend import Backend, BackendError
from pdlink.cloud.kv.snapshot import KVSnapshot
from pdlink.common.numerics import package_numerics


class PackageBackend(Backend):
    """A compiled package behind the :class:`Backend` interface (``Engine.prefill``/``batch_decode``)."""

    supports_kv_transfer = True

    def __init__(self, package: str, *, model_id: str, threads: int = 0, max_sequences: int = 16,
                 context_window: int = 0):
        from pdlink.edge.engine import Engine, EngineConfig
        from pdlink.common.package import PackageError
        from pdlink.common.tokenizer import end_of_turn_ids

        if not 1 <= max_sequences <= 256:
            raise BackendError("max_sequences must be in 1..256 for a compiled package")
        try:
            # NOTE: the paged cache is sized context_window * max_sequences up front, so a server
            # passes its prompt limit here rather than the model's 8k window.
            self.engine = Engine(EngineConfig(package=str(package), num_threads=threads,
                                              context_window=context_window, max_num_sequences=max_sequences))
        except PackageError as exc:
            raise BackendError(str(exc)) from exc
        engine = self.engine
        self.model_id, self.tokenizer, self.max_sequences = model_id, engine.tokenizer, max_sequences
        self.vocab_size = engine.model_config.vocab_size
        self.context_window = engine.context_window
        self.eos_token_ids = tuple(sorted(end_of_turn_ids(engine.model_config.eos_token_ids, self.tokenizer)))
        self.info = {"backend": "package", "device": "cpu", "threads": engine.num_threads, "package": str(package),
                     "quantization": engine.manifest.quantization, "target": engine.manifest.target.preset}
        self.numerics = package_numerics(engine.manifest)
        self._tokens: dict[int, list[int]] = {}  # what each sequence's cache holds (for export_kv)

    @property
    def num_sequences(self) -> int:
        return len(self.engine.sequences)

    def add_sequence(self) -> int:
        try:
            seq_id = self.engine.add_sequence()
        except RuntimeError as exc:
            raise BackendError(str(exc)) from exc
        self._tokens[seq_id] = []
        return seq_id

    def free_sequence(self, seq_id: int) -> None:
        self.engine.remove_sequence(seq_id)
        del self._tokens[seq_id]

    def export_kv(self, seq_id: int) -> KVSnapshot:
        return KVSnapshot.build(model_id=self.model_id, token_ids=self._tokens[seq_id],
                                data=self.engine.export_kv(seq_id),
                                page_size=int(self.engine.manifest.kv_cache["page_size"]))

    def import_kv(self, snapshot: KVSnapshot) -> int:
        if snapshot.header.model_id != self.model_id:
            raise ValueError(f"KV of model {snapshot.header.model_id!r} cannot continue on {self.model_id!r}")
        if len(self.engine.sequences) >= self.max_sequences:
            raise BackendError(f"{self.max_sequences} sequences are live already (max_sequences)")
        seq_id = self.engine.import_kv(snapshot.data)
        self._tokens[seq_id] = list(snapshot.header.token_ids)
        return seq_id

    def prefill(self, chunks: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        engine, out = self.engine, {}
        pending = {s: list(ids) for s, ids in chunks.items()}
        for s, ids in pending.items():
            if not ids:
                raise ValueError(f"sequence {s} got no tokens")
        # Several small chunks go through one batch_prefill call, up to the package's chunk size.
        while pending:
            group, total = {}, 0
            for s, ids in list(pending.items()):
                if total + len(ids) <= engine.prefill_chunk_size or not group:
                    group[s] = pending.pop(s)
                    total += len(ids)
            if len(group) == 1:
                (s, ids), = group.items()
                out[s] = engine.prefill(s, ids)
            else:
                out.update(engine.batch_prefill(group))
            for s, ids in group.items():
                self._tokens[s].extend(int(t) for t in ids)
        return out

    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        logits = self.engine.batch_decode(list(seq_ids), [int(t) for t in token_ids])
        for s, t in zip(seq_ids, token_ids):
            self._tokens[s].append(int(t))
        return logits
