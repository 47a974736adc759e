"""The model behind the cloud scheduler: a small interface, and ``load_backend`` to pick an implementation.

A backend holds sequences of token ids in a KV cache. The scheduler creates a sequence per
request, feeds it prompt chunks with ``prefill``, advances every live sequence by one token with a
single batched ``decode``, and frees it the moment the request ends. Logits come back as float32
numpy rows; sampling is the scheduler's job, so every backend samples the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from pdlink.common.models import default_model_id
from pdlink.common.tokenizer import Tokenizer

if TYPE_CHECKING:
    from pdlink.cloud.kv.snapshot import KVSnapshot
    from pdlink.common.protocol_messages import Numerics

BACKEND_DEVICES = ("cpu", "cuda", "npu")


class BackendError(RuntimeError):
    """The backend cannot start or cannot run a call: model missing, device unavailable, cache full."""


class Backend(ABC):
    """One loaded model. Not thread-safe: the server's model worker is its only caller.

    Attributes every implementation sets: ``model_id`` (the id clients send in ``hello``),
    ``tokenizer`` (an edge :class:`Tokenizer`, so ``tokenizer.hash`` is comparable with a device's),
    ``vocab_size``, ``eos_token_ids``, ``max_sequences`` (live sequences at most), ``context_window``
    (tokens per sequence at most) and ``info`` (a JSON-able description for logs and benchmarks).
    """

    model_id: str
    tokenizer: Tokenizer
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_sequences: int
    context_window: int
    info: dict

    @abstractmethod
    def add_sequence(self) -> int:
        """Create an empty sequence; returns its id. Raises ``BackendError`` when ``max_sequences`` are live."""

    @abstractmethod
    def free_sequence(self, seq_id: int) -> None:
        """Release a sequence's KV cache at once. Raises ``KeyError`` for an unknown id."""

    @abstractmethod
    def prefill(self, chunks: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """Append each sequence's chunk of tokens; returns the logits after each chunk's last token.

        Raises ``ValueError`` for an empty chunk, ids outside the vocabulary, or a sequence that would
        outgrow ``context_window`` (nothing is appended to that sequence then)."""

    @abstractmethod
    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Append one token to each of several distinct sequences in one batched step; logits ``[n, vocab]``
        in the order of ``seq_ids``. Raises ``ValueError`` as ``prefill`` does."""

    supports_refinement: bool = False  # True: ``track_attention`` and ``prompt_importance`` work
    numerics: "Numerics | None" = None  # the numbers this backend computes (``Welcome.numerics``)

    def track_attention(self, seq_id: int, window: int) -> None:
        """Keep what ``prompt_importance`` needs for ``seq_id`` (call before its prefill). Backends that
        cannot score prompts (``supports_refinement`` False) raise ``BackendError``."""
        raise self._cannot_score()

    def prompt_importance(self, seq_id: int) -> np.ndarray:
        """Per cached position of ``seq_id``: the attention mass the last tracked window puts on it."""
        raise self._cannot_score()

    def _cannot_score(self) -> BackendError:
        return BackendError(f"the {self.info.get('backend', type(self).__name__)} backend does not score prompts")

    supports_kv_transfer: bool = False  # True: ``export_kv`` and ``import_kv`` work

    def export_kv(self, seq_id: int) -> "KVSnapshot":
        """The KV of every token of ``seq_id`` as one contiguous :class:`~pdlink.cloud.kv.KVSnapshot`
        (the sequence is unchanged). Raises ``KeyError`` for an unknown id, ``ValueError`` for an empty one."""
        raise self._cannot_transfer()

    def import_kv(self, snapshot: "KVSnapshot") -> int:
        """A new sequence holding ``snapshot``'s KV, ready to ``decode`` its next token; returns its id.
        Raises ``ValueError`` when the snapshot is of another model or shape, ``BackendError`` when full."""
        raise self._cannot_transfer()

    def _cannot_transfer(self) -> BackendError:
        return BackendError(f"the {self.info.get('backend', type(self).__name__)} backend cannot export or import KV")

    @property
    @abstractmethod
    def num_sequences(self) -> int:
        """Sequences currently holding KV cache."""

    def close(self) -> None:
        """Release the model (optional)."""


def is_package_dir(model: str) -> bool:
    """True when ``model`` is a compiled package directory (it holds ``manifest.json``)."""
    return (Path(model) / "manifest.json").is_file()


def load_backend(model: str, *, device: str = "cpu", threads: int = 0, max_sequences: int = 16,
                 context_window: int = 0, model_id: str | None = None) -> Backend:
    """Load ``model``: a package directory runs on :class:`PackageBackend`, anything else (``smollm2-135m``,
    a ``.gguf`` file, an HF directory) on :class:`TorchBackend`. Raises ``BackendError`` with the fix."""
    if device not in BACKEND_DEVICES:
        raise BackendError(f"device {device!r} is not one of {', '.join(BACKEND_DEVICES)}")
    model_id = model_id or default_model_id(model)
    if is_package_dir(model):
        if device != "cpu":
            raise BackendError("compiled packages run on the host CPU here (this TVM wheel has no CUDA/NPU "
                               "runtime); use --device cpu, or serve a checkpoint with the torch backend")
        from pdlink.cloud.package_backend import PackageBackend

        return PackageBackend(model, model_id=model_id, threads=threads, max_sequences=max_sequences,
                              context_window=context_window)
    from pdlink.cloud.torch_backend import TorchBackend

    return TorchBackend(model, model_id=model_id, device=device, threads=threads, max_sequences=max_sequences,
                        context_window=context_window)
