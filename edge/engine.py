"""The on-device engine: loads a compiled package and runs prefill/decode over a paged KV cache.

Sequences live in one KV cache and are named by integer ids. Every way tokens enter a sequence --
the prompt, tokens received from the cloud, a resumed conversation -- goes through ``prefill``,
which advances the sequence's ``num_computed_tokens``. The engine is not thread-safe: drive one
engine from one thread at a time (its VM calls release the GIL, so other threads keep running).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdlink.common.package import ENTRY_POINTS, KV_IO, MAX_BATCH_SIZE, Manifest, PackageError, check_runnable_here, load_manifest
from pdlink.edge.kv_io import KVExchange
from pdlink.edge.params_file import ParamsFileError, load_params
from pdlink.common.heap import release_free_heap
from pdlink.common.tokenizer import Tokenizer
from pdlink.common.tvm_runtime import Runtime


SMALL_BATCH = 8  # this many rows or fewer run as single-row decodes (see prefill and batch_decode)


class PromptTooLongError(ValueError):
    """The tokens would not fit in the sequence's context window."""


def default_num_threads() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class EngineConfig:
    """How to run a package. ``context_window`` defaults to the model's; ``num_threads`` to all cores.

    The KV cache holds ``context_window * max_num_sequences`` tokens: pass the context the
    application needs (the model's 8k is rarely needed on a device) and raise
    ``max_num_sequences`` only for forks or batches.
    """

    package: str
    num_threads: int = 0
    context_window: int = 0
    max_num_sequences: int = 1
    # Tokens per prefill call (0 = the package's maximum): working memory grows with it, speed
    # hardly does past a few hundred tokens (llama.cpp's default micro-batch is 512 as well).
    prefill_chunk_size: int = 512
    verify_hashes: bool = True

    def __post_init__(self):
        if self.num_threads < 0:
            raise ValueError("num_threads must be >= 0 (0 = all cores)")
        if self.context_window < 0:
            raise ValueError("context_window must be >= 0 (0 = the model's)")
        if self.prefill_chunk_size < 0:
            raise ValueError("prefill_chunk_size must be >= 0 (0 = the package's maximum)")
        if not 1 <= self.max_num_sequences <= MAX_BATCH_SIZE:
            raise ValueError(f"max_num_sequences must be between 1 and {MAX_BATCH_SIZE}")


def _configure_thread_pool(rt: Runtime, num_threads: int) -> None:
    """Size TVM's pool. Mode -3 lets every worker float over the allowed cores: the other modes pin
    the calling thread to one core, and threads it starts later (torch's, asyncio's) inherit that."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    rt.get_global_func("runtime.config_threadpool")(-3, num_threads, [str(c) for c in cores])


class Engine:
    """A loaded package: ``prefill``/``decode`` over sequences in one paged KV cache."""

    def __init__(self, cfg: EngineConfig):
        rt = Runtime()
        self.cfg = cfg
        root = Path(cfg.package)
        self.manifest: Manifest = load_manifest(root, verify_hashes=cfg.verify_hashes)
        check_runnable_here(self.manifest.target)
        self.model_config = self.manifest.config
        self.num_threads = cfg.num_threads or default_num_threads()
        _configure_thread_pool(rt, self.num_threads)
        self._rt = rt
        self.vm = rt.virtual_machine(str(root / self.manifest.library))
        self._check_entry_points()
        # The tokenizer first: parsing its file leaves ~17 MiB of freed heap that is handed back before the
        # weights arrive, so the process's peak stays at what it keeps.
        self.tokenizer = Tokenizer(root / self.manifest.tokenizer["file"], self.manifest.tokenizer)
        release_free_heap()
        self.params = self._load_params(root)
        model_window = self.model_config.context_window_size
        self.context_window = min(cfg.context_window or model_window, model_window)
        package_chunk = int(self.manifest.kv_cache["prefill_chunk_size"])
        self.prefill_chunk_size = min(cfg.prefill_chunk_size or package_chunk, package_chunk)
        self._f = {name: self.vm[name] for name in ("prefill", "decode", "batch_decode", "batch_prefill", "argmax")}
        self._kv_fn = {
            name: rt.get_global_func(f"vm.builtin.kv_state_{name}")
            for name in ("add_sequence", "remove_sequence", "fork_sequence", "popn", "begin_forward", "end_forward")
        }
        self.kv = self.vm["create_tir_paged_kv_cache"](
            *(rt.shape([v]) for v in self._kv_cache_args())
        )
        cfg_m = self.model_config
        self._kv_io = KVExchange(rt, cfg_m.num_hidden_layers, cfg_m.num_key_value_heads, cfg_m.head_dim,
                                 dtype=self.manifest.kv_cache.get("dtype", "float32"))
        self._lengths: dict[int, int] = {}
        self._next_id = 0
        self._pool_threads = {threading.get_ident()}  # threads whose TVM pool is sized (see _forward)

    def _kv_cache_args(self) -> tuple[int, ...]:
        total = self.context_window * self.cfg.max_num_sequences
        page = int(self.manifest.kv_cache["page_size"])
        return (self.cfg.max_num_sequences, total, self.prefill_chunk_size, page, 0)

    def _check_entry_points(self) -> None:
        if self.manifest.kv_cache.get("kv_io") != KV_IO:
            raise PackageError("package was built before KV export/import (its kv_cache lacks kv_io "
                               f"{KV_IO!r}); recompile it with this pdlink")
        for name, args in ENTRY_POINTS.items():
            if self.manifest.entry_points.get(name) != args:
                raise PackageError(f"package entry point {name!r} differs from what this runtime calls; recompile")
            try:
                self.vm[name]
            except (AttributeError, KeyError, RuntimeError) as exc:
                raise PackageError(f"package library lacks entry point {name!r}") from exc

    def _load_params(self, root: Path) -> list:
        try:
            return load_params(root / self.manifest.params_file, self.manifest.param_names, self._rt)
        except ParamsFileError as exc:
            raise PackageError(f"{exc}; the package is corrupt") from exc

    # ------------------------------------------------------------------ sequences

    def add_sequence(self) -> int:
        """Create an empty sequence; returns its id. Raises RuntimeError when the cache is full."""
        if len(self._lengths) >= self.cfg.max_num_sequences:
            raise RuntimeError(f"engine holds {len(self._lengths)} sequences already (max_num_sequences)")
        seq_id = self._new_id()
        self._kv_fn["add_sequence"](self.kv, seq_id)
        self._lengths[seq_id] = 0
        return seq_id

    def fork_sequence(self, parent: int, num_tokens: int | None = None) -> int:
        """New sequence sharing ``parent``'s first ``num_tokens`` tokens (all by default)."""
        self._require(parent)
        if len(self._lengths) >= self.cfg.max_num_sequences:
            raise RuntimeError("engine is full (max_num_sequences)")
        length = self._lengths[parent] if num_tokens is None else num_tokens
        if not 0 < length <= self._lengths[parent]:
            raise ValueError(f"fork position {length} outside 1..{self._lengths[parent]}")
        child = self._new_id()
        fork_pos = -1 if length == self._lengths[parent] else length
        self._kv_fn["fork_sequence"](self.kv, parent, child, fork_pos)
        self._lengths[child] = length
        return child

    def remove_sequence(self, seq_id: int) -> None:
        """Free a sequence's KV pages."""
        self._require(seq_id)
        self._kv_fn["remove_sequence"](self.kv, seq_id)
        del self._lengths[seq_id]

    def rollback(self, seq_id: int, num_tokens: int) -> None:
        """Drop the last ``num_tokens`` tokens of a sequence."""
        self._require(seq_id)
        if not 0 <= num_tokens <= self._lengths[seq_id]:
            raise ValueError(f"cannot drop {num_tokens} of {self._lengths[seq_id]} tokens")
        if num_tokens:
            self._kv_fn["popn"](self.kv, seq_id, num_tokens)
            self._lengths[seq_id] -= num_tokens

    def export_kv(self, seq_id: int) -> np.ndarray:
        """A copy of the sequence's KV, ``[num_layers, 2, tokens, kv_heads, head_dim]`` in the cache's dtype
        (K after RoPE); the sequence is unchanged. ValueError for an empty sequence."""
        self._require(seq_id)
        if not self._lengths[seq_id]:
            raise ValueError(f"sequence {seq_id} is empty: nothing to export")
        return self._kv_io.read(self.kv, seq_id, self._lengths[seq_id])

    def import_kv(self, data: np.ndarray) -> int:
        """A new sequence holding ``data`` (as ``export_kv`` returns it, possibly from another engine of the
        same model); decode its next token as if it had been prefilled here. Returns its id."""
        data = self._kv_io.check(data, self.context_window)
        seq_id = self.add_sequence()
        try:
            st = self._rt.shape
            for start in range(0, data.shape[2], self.prefill_chunk_size):  # reserve the pages, chunk by chunk
                n = min(self.prefill_chunk_size, data.shape[2] - start)
                self._kv_fn["begin_forward"](self.kv, st([seq_id]), st([n]))
                self._kv_fn["end_forward"](self.kv)
                self._lengths[seq_id] += n
            self._kv_io.write(self.kv, seq_id, data)
        except BaseException:
            self.remove_sequence(seq_id)
            raise
        return seq_id

    def num_computed_tokens(self, seq_id: int) -> int:
        """Tokens of the sequence already in the KV cache."""
        self._require(seq_id)
        return self._lengths[seq_id]

    @property
    def sequences(self) -> tuple[int, ...]:
        return tuple(self._lengths)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _require(self, seq_id: int) -> None:
        if seq_id not in self._lengths:
            raise KeyError(f"no sequence {seq_id}")

    def _check_room(self, seq_id: int, extra: int) -> None:
        if self._lengths[seq_id] + extra > self.context_window:
            raise PromptTooLongError(
                f"{self._lengths[seq_id]} + {extra} tokens exceed the context window of {self.context_window} "
                "tokens; shorten the prompt or raise --context (model maximum "
                f"{self.model_config.context_window_size})"
            )

    def _check_ids(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.model_config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.model_config.vocab_size})")
        return ids.astype(np.int32)

    # ------------------------------------------------------------------ compute

    def _forward(self, fn: str, seq_ids: list[int], lengths: list[int], *inputs) -> np.ndarray:
        return self._rt.numpy(self._run(fn, seq_ids, lengths, *inputs))

    def _run(self, fn: str, seq_ids: list[int], lengths: list[int], *inputs):
        """Call entry point ``fn`` for the sequences; its logits as the VM's tensor."""
        if threading.get_ident() not in self._pool_threads:
            # TVM keeps one thread pool per calling thread: a pool never sized falls back to half the
            # cores on x86, so a server's model worker thread ran prefill on 1 of 2 threads.
            _configure_thread_pool(self._rt, self.num_threads)
            self._pool_threads.add(threading.get_ident())
        st = self._rt.shape
        self._kv_fn["begin_forward"](self.kv, st(seq_ids), st(lengths))
        try:
            args = [self._rt.tensor(x) for x in inputs]
            logits, self.kv = self._f[fn](*args, self.kv, self.params)
        finally:
            self._kv_fn["end_forward"](self.kv)
        for seq_id, n in zip(seq_ids, lengths):
            self._lengths[seq_id] += n
        return logits

    def prefill(self, seq_id: int, token_ids, chunk_size: int | None = None) -> np.ndarray:
        """Append ``token_ids`` to a sequence in chunks; logits after the last one (``[vocab]``).

        Raises PromptTooLongError when the sequence would outgrow the context window (nothing is
        appended then) and ValueError for ids outside the vocabulary or an empty list.
        """
        self._require(seq_id)
        ids = self._check_ids(token_ids)
        if ids.size == 0:
            raise ValueError("prefill needs at least one token")
        self._check_room(seq_id, ids.size)
        if ids.size <= SMALL_BATCH:  # a few tokens (e.g. received from the cloud): GEMVs beat a padded GEMM
            for token in ids[:-1]:
                self._forward("decode", [seq_id], [1], token.reshape(1, 1))
            return self._forward("decode", [seq_id], [1], ids[-1:].reshape(1, 1))[0]
        chunk = min(chunk_size or self.prefill_chunk_size, self.prefill_chunk_size)
        logits = None
        for start in range(0, ids.size, chunk):
            part = ids[start : start + chunk]
            logits = self._forward("prefill", [seq_id], [part.size], part.reshape(1, -1))
        return logits[0]

    def decode(self, seq_id: int, token_id: int) -> np.ndarray:
        """Append one token; logits for the next (``[vocab]``)."""
        return self._rt.numpy(self._decode_one(seq_id, token_id))[0]

    def decode_greedy(self, seq_id: int, token_id: int) -> int:
        """:meth:`decode`, then the greedy next token picked inside the package (only its id leaves the VM)."""
        return int(self._rt.numpy(self._f["argmax"](self._decode_one(seq_id, token_id)))[0])

    def _decode_one(self, seq_id: int, token_id: int):
        self._require(seq_id)
        ids = self._check_ids([token_id])
        self._check_room(seq_id, 1)
        return self._run("decode", [seq_id], [1], ids.reshape(1, 1))

    def batch_decode(self, seq_ids: list[int], token_ids: list[int]) -> np.ndarray:
        """One token for each of several sequences; logits ``[len(seq_ids), vocab]``."""
        if len(seq_ids) != len(token_ids) or len(set(seq_ids)) != len(seq_ids):
            raise ValueError("batch_decode needs one token per distinct sequence")
        for s in seq_ids:
            self._require(s)
            self._check_room(s, 1)
        ids = self._check_ids(token_ids)
        if len(seq_ids) <= SMALL_BATCH:
            # The batched entry point runs GEMMs over rows padded to a tile, which dequantize each weight
            # tile once per call: below a tile of rows, one GEMV per sequence reads the weights for less.
            return np.stack([self._forward("decode", [s], [1], ids[i : i + 1].reshape(1, 1))[0]
                             for i, s in enumerate(seq_ids)])
        return self._forward("batch_decode", list(seq_ids), [1] * len(seq_ids), ids.reshape(-1, 1))

    def batch_prefill(self, chunks: dict[int, list[int]]) -> dict[int, np.ndarray]:
        """Append tokens to several sequences in one call; logits after each sequence's last token."""
        seq_ids = list(chunks)
        arrays = [self._check_ids(chunks[s]) for s in seq_ids]
        for s, a in zip(seq_ids, arrays):
            self._require(s)
            if a.size == 0:
                raise ValueError(f"sequence {s} got no tokens")
            self._check_room(s, a.size)
        if sum(a.size for a in arrays) > self.prefill_chunk_size:
            raise ValueError(f"batch_prefill takes at most {self.prefill_chunk_size} tokens in all")
        lengths = [int(a.size) for a in arrays]
        positions = np.cumsum(lengths).astype(np.int32) - 1
        logits = self._forward("batch_prefill", seq_ids, lengths, np.concatenate(arrays).reshape(1, -1), positions)
        return {s: logits[i] for i, s in enumerate(seq_ids)}
