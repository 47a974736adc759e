"""Llama-family decoder in ``tvm.relax.frontend.nn`` with TVM's paged KV cache.

Weights are :class:`~pdlink.compile.formatted_matrix.FormattedMatrix` objects held in the storage
formats of :mod:`pdlink.compile.weight_format`, dequantized inside the matmul kernels.
"""

from __future__ import annotations

import contextlib

from tvm import te, topi
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm import relax as rx

from pdlink.compile.attention import cpu_attention_kernels
from pdlink.compile.kv_exchange import kv_exchange_kernel
from pdlink.compile.formatted_matrix import FormattedMatrix, matmul_forms
from pdlink.compile.quantization import Quantization
from pdlink.compile.weight_format import WeightFormat
from pdlink.common.model_config import LlamaConfig


class Linear(nn.Module):
    """Bias-free linear layer over a :class:`FormattedMatrix`."""

    def __init__(self, in_features: int, out_features: int, fmt: WeightFormat):
        self.w = FormattedMatrix(out_features, in_features, fmt)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        lead = list(x.shape[:-1])
        flat = nn.op.reshape(x, [-1, x.shape[-1]])
        out = self.w.matmul_nt(flat, "linear")
        return nn.op.reshape(out, lead + [self.w.out_features])

    def swiglu(self, x: nn.Tensor) -> nn.Tensor | None:
        """``silu(gate) * up`` of this layer's output halves in one kernel, or None (see
        ``FormattedMatrix.matmul_swiglu``)."""
        lead = list(x.shape[:-1])
        out = self.w.matmul_swiglu(nn.op.reshape(x, [-1, x.shape[-1]]), "linear_swiglu")
        return None if out is None else nn.op.reshape(out, lead + [self.w.out_features // 2])


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        self.weight = nn.Parameter((size,), "float32")
        self.eps = eps

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return nn.op.rms_norm(x, self.weight, axes=[-1], epsilon=self.eps)


# KV pages hold float16 by default (half the memory of float32, like llama.cpp's default cache); everything else
# computes in float32, and the CPU attention kernels accumulate in float32. An f32 package keeps float32 pages
# (``--kv-dtype``), so it computes the reference's numbers on any prompt length.
KV_DTYPE = "float16"


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, fmt: WeightFormat, kv_dtype: str = KV_DTYPE):
        self.num_q, self.num_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.kv_dtype = kv_dtype
        self.qkv_proj = Linear(cfg.hidden_size, (self.num_q + 2 * self.num_kv) * self.head_dim, fmt)
        self.o_proj = Linear(self.num_q * self.head_dim, cfg.hidden_size, fmt)

    def forward(self, x: nn.Tensor, kv: PagedKVCache, layer_id: int) -> nn.Tensor:
        b, s, _ = x.shape
        qkv = nn.op.reshape(self.qkv_proj(x), (b, s, self.num_q + 2 * self.num_kv, self.head_dim))
        out = kv.attention_with_fused_qkv(layer_id, qkv.astype(self.kv_dtype), self.num_q, sm_scale=self.head_dim**-0.5)
        out = out.astype("float32")
        return self.o_proj(nn.op.reshape(out, (b, s, self.num_q * self.head_dim)))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, fmt: WeightFormat):
        self.inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, fmt)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, fmt)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        fused = self.gate_up_proj.swiglu(x)
        if fused is not None:
            return self.down_proj(fused)
        gate, up = nn.op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(nn.op.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, fmt: WeightFormat, kv_dtype: str = KV_DTYPE):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, fmt, kv_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, fmt)

    def forward(self, x: nn.Tensor, kv: PagedKVCache, layer_id: int) -> nn.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    """The exported model; its methods are the package's entry points (see ``spec``)."""

    def __init__(self, cfg: LlamaConfig, quant: Quantization, target, tuned: bool = True, kv_dtype: str = KV_DTYPE):
        """``tuned=False`` gives every matmul the plain form with no pdlink schedule (same answers,
        slower: it exists to check that tuning changes nothing). See ``matmul_forms``. ``kv_dtype``: the
        dtype of the KV pages ("float16" or "float32")."""
        self.cfg, self.target, self.kv_dtype = cfg, target, kv_dtype
        form = "plain" if not tuned else "cpu" if target.kind.name == "llvm" else "portable"
        with matmul_forms(form, target):
            self.embed_tokens = FormattedMatrix(cfg.vocab_size, cfg.hidden_size, quant.embedding_format)
            self.layers = nn.ModuleList([DecoderLayer(cfg, quant.linear_format, kv_dtype) for _ in range(cfg.num_hidden_layers)])
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            if not cfg.tie_word_embeddings:
                self.lm_head = FormattedMatrix(cfg.vocab_size, cfg.hidden_size, quant.linear_format)

    def _head(self) -> FormattedMatrix:
        return self.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head

    def _hidden(self, input_ids: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
        b, s = input_ids.shape
        x = self.embed_tokens.rows(nn.op.reshape(input_ids, [b * s]), "embed")
        x = nn.op.reshape(x, [b, s, self.cfg.hidden_size])
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv, layer_id)
        return self.norm(x)

    def _logits(self, hidden_rows: nn.Tensor) -> nn.Tensor:
        return self._head().matmul_nt(hidden_rows, "lm_head")

    def prefill(self, input_ids: nn.Tensor, kv: PagedKVCache):
        """Run ``[1, n]`` tokens of one sequence; logits of the last token ``[1, vocab]``."""
        hidden = self._hidden(input_ids, kv)
        last = nn.tensor_expr_op(
            lambda h: te.compute((1, h.shape[2]), lambda i, j: h[0, h.shape[1] - 1, j], name="last_row"), "last_row", [hidden]
        )
        return self._logits(last), kv

    def batch_prefill(self, input_ids: nn.Tensor, logit_positions: nn.Tensor, kv: PagedKVCache):
        """Run several sequences packed as ``[1, total]``; logits at ``logit_positions`` ``[batch, vocab]``."""
        hidden = nn.op.reshape(self._hidden(input_ids, kv), [-1, self.cfg.hidden_size])
        rows = nn.tensor_expr_op(
            lambda h, p: te.compute((p.shape[0], self.cfg.hidden_size), lambda i, j: h[p[i], j], name="gather_rows"),
            "gather_rows",
            [hidden, logit_positions],
        )
        return self._logits(rows), kv

    def decode(self, input_ids: nn.Tensor, kv: PagedKVCache):
        """One token ``[1, 1]`` of one sequence; logits ``[1, vocab]``."""
        hidden = self._hidden(input_ids, kv)
        return self._logits(nn.op.reshape(hidden, [1, self.cfg.hidden_size])), kv

    def batch_decode(self, input_ids: nn.Tensor, kv: PagedKVCache):
        """One token each for ``[batch, 1]`` sequences; logits ``[batch, vocab]``."""
        hidden = self._hidden(input_ids, kv)
        return self._logits(nn.op.reshape(hidden, [-1, self.cfg.hidden_size])), kv

    def argmax(self, logits: nn.Tensor):
        """Greedy token of each row of ``[batch, vocab]`` logits (``[batch]`` int32), so a greedy step
        copies one id per sequence out of the VM instead of the vocabulary's logits."""
        return nn.tensor_expr_op(lambda x: topi.argmax(x, axis=1), "argmax", [logits])

    def create_tir_paged_kv_cache(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window):
        """Create the paged KV cache object (called once by the runtime).

        On CPU (``llvm``) targets the cache gets pdlink's parallel, vectorized attention kernels
        (:mod:`pdlink.compile.attention`) in place of TVM's serial ones; GPU targets keep TVM's.
        """
        cfg = self.cfg
        kernels = cpu_attention_kernels() if self.target.kind.name == "llvm" else contextlib.nullcontext()
        with kernels, kv_exchange_kernel():
            return TIRPagedKVCache(
                attn_kind="mha",
                max_batch_size=max_batch_size,
                max_total_seq_len=max_total_seq_len,
                prefill_chunk_size=prefill_chunk_size,
                page_size=page_size,
                support_sliding_window=support_sliding_window,
                layer_partition=rx.ShapeExpr([0, cfg.num_hidden_layers]),
                num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_key_value_heads,
                qk_head_dim=cfg.head_dim,
                v_head_dim=cfg.head_dim,
                mla_original_qk_head_dim=0,
                mla_original_v_head_dim=0,
                rope_mode=RopeMode.NORMAL,
                rope_scale=1,
                rope_theta=cfg.rope_theta,
                rope_scaling={},
                rope_ext_factors=rx.prim_value(0),
                rotary_dim=cfg.head_dim,
                enable_disaggregation=False,
                dtype=self.kv_dtype,
                target=self.target,
            )

    def spec(self) -> nn.spec.ModuleSpec:
        """Entry points as data: name -> argument shapes (symbolic) -> param/effect mode."""
        kv = nn.spec.Object(object_type=PagedKVCache)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return nn.spec.ModuleSpec.from_raw(
            {
                "prefill": {"input_ids": nn.spec.Tensor([1, "seq_len"], "int32"), "kv": kv, "$": packed},
                "batch_prefill": {
                    "input_ids": nn.spec.Tensor([1, "seq_len"], "int32"),
                    "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                    "kv": kv,
                    "$": packed,
                },
                "decode": {"input_ids": nn.spec.Tensor([1, 1], "int32"), "kv": kv, "$": packed},
                "batch_decode": {"input_ids": nn.spec.Tensor(["batch_size", 1], "int32"), "kv": kv, "$": packed},
                "argmax": {
                    "logits": nn.spec.Tensor(["batch_size", self.cfg.vocab_size], "float32"),
                    "$": {"param_mode": "none", "effect_mode": "none"},
                },
                "create_tir_paged_kv_cache": {
                    "max_batch_size": int,
                    "max_total_seq_len": int,
                    "prefill_chunk_size": int,
                    "page_size": int,
                    "support_sliding_window": int,
                    "$": {"param_mode": "none", "effect_mode": "none"},
                },
            },
            self,
        )
