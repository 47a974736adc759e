"""The cloud backend on torch: a transformers model on ``cpu``, ``cuda`` or ``npu`` (Ascend, via ``torch_npu``).

Each sequence owns a transformers ``DynamicCache`` while it prefills. Decoding sequences live together
in one left-padded batch cache, so a decode step is one forward pass over ``[batch, 1]`` tokens with an
attention mask hiding the padding and per-row position ids. The batch is regrouped only when its
membership changes (a request joins after its prefill, or leaves).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pdlink.cloud.attention_scorer import AttentionScorer
from pdlink.cloud.backend import Backend, BackendError
from pdlink.cloud.kv.snapshot import KVSnapshot
from pdlink.cloud.kv.torch_layout import array_to_layers, layers_to_array
from pdlink.common.models import cache_root
from pdlink.common.protocol_messages import Numerics
from pdlink.common.tokenizer import Tokenizer

log = logging.getLogger(__name__)
KV_PAGE_SIZE = 16  # tokens per block when a snapshot is sent in the block layout (transformers' cache has no pages)


def import_torch(device: str):
    """torch, with ``device`` checked usable; raises ``BackendError`` saying what to install."""
    try:
        import torch
    except ImportError as exc:
        raise BackendError("the torch backend needs torch and transformers: pip install 'pdlink[cloud]'") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda: this torch build sees no CUDA GPU (torch.cuda.is_available() is False)")
    if device == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the "npu" device with torch)
        except ImportError as exc:
            raise BackendError("--device npu needs Ascend's torch_npu plugin matching this torch version "
                               f"(pip install torch-npu=={torch.__version__.split('+')[0]}); import failed: {exc}") from exc
        if not torch.npu.is_available():
            raise BackendError("--device npu: torch_npu is installed but sees no NPU")
    return torch


def checkpoint_tokenizer(ckpt) -> Tokenizer:
    """The checkpoint's tokenizer as a package would ship it, so ``Tokenizer.hash`` matches a package's.

    The tokenizer file is written by the compiler's own ``save_tokenizer`` (transformers'
    ``backend_tokenizer.save``) into a cache directory keyed by the checkpoint file and the
    transformers version, and then read back like a package's ``tokenizer.json``.
    """
    import transformers

    stat = ckpt.path.stat()
    key = hashlib.sha256(f"{ckpt.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
                         .encode()).hexdigest()[:16]
    folder = cache_root() / "tokenizers" / key
    if not (folder / "tokenizer_info.json").is_file():
        tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        info = ckpt.save_tokenizer(tmp)
        (tmp / "tokenizer_info.json").write_text(json.dumps(info))
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first; its copy is identical
            pass
    info = json.loads((folder / "tokenizer_info.json").read_text())
    return Tokenizer(folder / info["file"], info)


@dataclass
class _Seq:
    length: int = 0
    cache: object = None  # a DynamicCache [1, heads, length, dim] while outside the decode batch
    token_ids: list = field(default_factory=list)  # what the cache holds (for export_kv)


class _DecodeBatch:
    """Left-padded caches of the decoding sequences: row i holds ``pads[i]`` zero columns, then its tokens."""

    def __init__(self, rows: list[int], pads: list[int], cache, width: int, mask):
        self.rows, self.pads, self.cache, self.width, self.mask = rows, pads, cache, width, mask


class TorchBackend(Backend):
    """A transformers causal LM (float32) behind the :class:`Backend` interface; scores prompts for refinement."""

    supports_refinement = True
    supports_kv_transfer = True

    def __init__(self, model: str, *, model_id: str, device: str = "cpu", threads: int = 0, max_sequences: int = 16,
                 context_window: int = 0):
        from pdlink.compile.checkpoint import CheckpointError, GGUFCheckpoint, open_checkpoint

        torch = self._torch = import_torch(device)
        if threads:
            torch.set_num_threads(threads)
        try:
            ckpt = open_checkpoint(model)
        except CheckpointError as exc:
            raise BackendError(str(exc)) from exc
        from transformers import AutoModelForCausalLM

        self.tokenizer = checkpoint_tokenizer(ckpt)
        if isinstance(ckpt, GGUFCheckpoint):
            net = AutoModelForCausalLM.from_pretrained(str(ckpt.path.parent), gguf_file=ckpt.path.name,
                                                       dtype=torch.float32)
        else:
            net = AutoModelForCausalLM.from_pretrained(str(ckpt.path), dtype=torch.float32)
        self.device = torch.device(device)
        self.model = net.to(self.device).eval()
        cfg = ckpt.config
        self.model_id, self.vocab_size, self.max_sequences = model_id, cfg.vocab_size, max_sequences
        self.context_window = min(context_window or cfg.context_window_size, cfg.context_window_size)
        eos = self.tokenizer.token_id(self.tokenizer.info.get("eos_token") or "")
        self.eos_token_ids = tuple(sorted(set(cfg.eos_token_ids) | ({eos} if eos is not None else set())))
        self.info = {"backend": "torch", "device": device, "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "model": str(model), "dtype": "float32",
                     "attn_implementation": getattr(net.config, "_attn_implementation", None)}
        self.numerics = Numerics(checkpoint=ckpt.name, weights="f32", kv_dtype="float32", compute="float32",
                                 backend="torch")
        self._scorer = AttentionScorer(self.model, torch)
        self._seqs: dict[int, _Seq] = {}
        self._batch: _DecodeBatch | None = None
        self._next_id = 0

    # ------------------------------------------------------------------ sequences

    @property
    def num_sequences(self) -> int:
        return len(self._seqs)

    def add_sequence(self) -> int:
        if len(self._seqs) >= self.max_sequences:
            raise BackendError(f"{len(self._seqs)} sequences are live already (max_sequences)")
        self._next_id += 1
        self._seqs[self._next_id] = _Seq()
        return self._next_id

    def free_sequence(self, seq_id: int) -> None:
        del self._seqs[seq_id]  # KeyError for an unknown id, as documented
        self._scorer.forget(seq_id)
        # The row stays in the batch cache until the next regroup, unless no row is left alive.
        if self._batch is not None and not any(s in self._seqs for s in self._batch.rows):
            self._batch = None

    def track_attention(self, seq_id: int, window: int) -> None:
        if self._seqs[seq_id].length:
            raise ValueError(f"sequence {seq_id} is prefilled already: track it before its first chunk")
        self._scorer.track(seq_id, window)

    def prompt_importance(self, seq_id: int) -> np.ndarray:
        seq = self._seqs[seq_id]
        if seq.cache is None:
            raise ValueError(f"sequence {seq_id} has no cache of its own (score it before decoding)")
        return self._scorer.scores(seq_id, seq.cache, seq.length)

    def export_kv(self, seq_id: int) -> KVSnapshot:
        seq = self._seqs[seq_id]
        if not seq.length:
            raise ValueError(f"sequence {seq_id} is empty: nothing to export")
        if seq.cache is not None:
            layers = [(layer.keys, layer.values) for layer in seq.cache.layers]
        else:  # a row of the decode batch, after its left padding
            i = self._batch.rows.index(seq_id)
            pad = self._batch.pads[i]
            layers = [(layer.keys[i:i + 1, :, pad:], layer.values[i:i + 1, :, pad:]) for layer in self._batch.cache.layers]
        return KVSnapshot.build(model_id=self.model_id, token_ids=seq.token_ids, data=layers_to_array(layers),
                                page_size=KV_PAGE_SIZE)

    def import_kv(self, snapshot: KVSnapshot) -> int:
        from transformers import DynamicCache

        h = snapshot.header
        cfg = self.model.config
        want = (cfg.num_hidden_layers, cfg.num_key_value_heads, getattr(cfg, "head_dim", None)
                or cfg.hidden_size // cfg.num_attention_heads)
        if h.model_id != self.model_id or (h.num_layers, h.num_kv_heads, h.head_dim) != want:
            raise ValueError(f"KV of {h.model_id} ({h.num_layers} layers, {h.num_kv_heads}x{h.head_dim}) does not fit "
                             f"{self.model_id} ({want[0]} layers, {want[1]}x{want[2]})")
        if h.dtype not in ("float32", "float16"):
            raise ValueError(f"KV of dtype {h.dtype} cannot continue on this float32 model (float32 or float16 KV)")
        if len(h.token_ids) > self.context_window:
            raise ValueError(f"{len(h.token_ids)} tokens of KV exceed the context window of {self.context_window}")
        seq_id = self.add_sequence()
        seq = self._seqs[seq_id]
        seq.cache = DynamicCache(ddp_cache_data=array_to_layers(snapshot.data.astype(np.float32, copy=False),
                                                                self.device))
        seq.length, seq.token_ids = len(h.token_ids), list(h.token_ids)
        return seq_id

    def _check(self, seq_id: int, token_ids: Sequence[int]) -> list[int]:
        seq = self._seqs[seq_id]
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError(f"sequence {seq_id} got no tokens")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        if seq.length + len(ids) > self.context_window:
            raise ValueError(f"{seq.length} + {len(ids)} tokens exceed the context window of {self.context_window}")
        return ids

    # ------------------------------------------------------------------ compute

    def prefill(self, chunks: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        # NOTE: chunks run one forward each. A prefill chunk already gives the matmuls hundreds of
        # rows, so stacking chunks of different sequences (with padding) would gain little on CPU.
        checked = {s: self._check(s, ids) for s, ids in chunks.items()}
        if self._batch is not None and any(s in self._batch.rows for s in checked):
            self._regroup([s for s in self._batch.rows if s in self._seqs and s not in checked])
        torch, out = self._torch, {}
        from transformers import DynamicCache

        with torch.inference_mode():
            for seq_id, ids in checked.items():
                seq = self._seqs[seq_id]
                if seq.cache is None:
                    seq.cache = DynamicCache()
                positions = torch.arange(seq.length, seq.length + len(ids), device=self.device)
                with self._scorer.capturing(seq_id):
                    result = self.model(input_ids=torch.tensor([ids], device=self.device),
                                        position_ids=positions[None], cache_position=positions,
                                        past_key_values=seq.cache, use_cache=True, logits_to_keep=1)
                seq.length += len(ids)
                seq.token_ids.extend(ids)
                out[seq_id] = result.logits[0, -1].float().cpu().numpy()
        return out

    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        seq_ids = [int(s) for s in seq_ids]
        if len(seq_ids) != len(token_ids) or len(set(seq_ids)) != len(seq_ids) or not seq_ids:
            raise ValueError("decode needs one token per distinct sequence")
        for s, t in zip(seq_ids, token_ids):
            self._check(s, [t])
            if self._seqs[s].length == 0:
                raise ValueError(f"sequence {s} is empty: prefill it before decoding")
        batch = self._batch
        if batch is None or set(batch.rows) != set(seq_ids):
            batch = self._regroup(seq_ids)
        torch = self._torch
        row_of = {s: i for i, s in enumerate(batch.rows)}
        by_row = [0] * len(batch.rows)
        for s, t in zip(seq_ids, token_ids):
            by_row[row_of[s]] = int(t)
        lengths = [self._seqs[s].length for s in batch.rows]
        mask = None
        if batch.mask is not None:
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
            mask = batch.mask
        with torch.inference_mode():
            result = self.model(input_ids=torch.tensor(by_row, device=self.device)[:, None], attention_mask=mask,
                                position_ids=torch.tensor(lengths, device=self.device)[:, None],
                                cache_position=torch.tensor([batch.width], device=self.device),
                                past_key_values=batch.cache, use_cache=True)
        batch.width += 1
        for s in batch.rows:
            self._seqs[s].length += 1
        for s, t in zip(seq_ids, token_ids):
            self._seqs[s].token_ids.append(int(t))
        logits = result.logits[:, -1].float().cpu().numpy()
        return logits[[row_of[s] for s in seq_ids]]

    def _regroup(self, members: list[int]) -> _DecodeBatch | None:
        """Rebuild the batch cache with exactly ``members``; sequences leaving it get their own cache back."""
        with self._torch.inference_mode():
            return self._rebuild(members)

    def _rebuild(self, members: list[int]) -> _DecodeBatch | None:
        from transformers import DynamicCache

        torch, old = self._torch, self._batch
        old_rows = {s: i for i, s in enumerate(old.rows)} if old else {}
        per_seq = {}  # seq id -> [(k, v) per layer], each [1, heads, length, dim]
        for s in set(members) | {s for s in old_rows if s in self._seqs}:
            seq = self._seqs[s]
            if s in old_rows:
                i, pad = old_rows[s], old.pads[old_rows[s]]
                per_seq[s] = [(layer.keys[i:i + 1, :, pad:], layer.values[i:i + 1, :, pad:])
                              for layer in old.cache.layers]
            else:
                per_seq[s] = [(layer.keys, layer.values) for layer in seq.cache.layers]
        for s in old_rows:
            if s in self._seqs and s not in members:
                self._seqs[s].cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in per_seq[s]])
        self._batch = None
        if not members:
            return None
        width = max(self._seqs[s].length for s in members)
        pads = [width - self._seqs[s].length for s in members]
        layers = []
        for layer in range(len(per_seq[members[0]])):
            ks = [torch.nn.functional.pad(per_seq[s][layer][0], (0, 0, p, 0)) for s, p in zip(members, pads)]
            vs = [torch.nn.functional.pad(per_seq[s][layer][1], (0, 0, p, 0)) for s, p in zip(members, pads)]
            layers.append((torch.cat(ks), torch.cat(vs)))
        mask = None
        if any(pads):
            mask = torch.ones((len(members), width), dtype=torch.long, device=self.device)
            for i, p in enumerate(pads):
                mask[i, :p] = 0
        for s in members:
            self._seqs[s].cache = None
        self._batch = _DecodeBatch(list(members), pads, DynamicCache(ddp_cache_data=layers), width, mask)
        return self._batch
