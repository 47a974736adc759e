"""The decode side of a hand-over: take a sequence's KV from a transfer, or re-prefill it when the transfer fails.

Either way the backend ends up holding ``token_ids`` in one new sequence, so the caller decodes the next
token the same way (token-exact: greedy tokens do not depend on which path was taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pdlink.cloud.backend import Backend, BackendError
from pdlink.cloud.kv.transfer import KVReceiver, TransferError


@dataclass(frozen=True)
class Landing:
    """Where a handed-over sequence came from: ``transfer`` or ``reprefill`` (then ``error`` says why)."""

    seq_id: int
    source: str
    error: str | None = None


def land_sequence(backend: Backend, receiver: KVReceiver, transfer_id: str, token_ids: Sequence[int], *,
                  timeout: float) -> Landing:
    """A new sequence of ``backend`` holding ``token_ids``: imported from transfer ``transfer_id`` when it
    arrives within ``timeout`` seconds intact and for these tokens, else prefilled here from ``token_ids``.
    Raises ``BackendError`` only when the backend cannot take another sequence at all."""
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError("token_ids is empty: a handed-over sequence holds at least one token")
    try:
        snapshot = receiver.wait(transfer_id, timeout)
        if list(snapshot.header.token_ids) != ids:
            raise ValueError(f"the transfer holds {snapshot.num_tokens} other tokens than the {len(ids)} expected")
        return Landing(backend.import_kv(snapshot), "transfer")
    except (TransferError, TimeoutError, ValueError, BackendError) as exc:
        receiver.discard(transfer_id)
        reason = f"{type(exc).__name__}: {exc}"
    seq_id = backend.add_sequence()
    try:
        backend.prefill({seq_id: ids})
    except BaseException:
        backend.free_sequence(seq_id)
        raise
    return Landing(seq_id, "reprefill", reason)
