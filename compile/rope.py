"""Split of the fused QKV rows and RoPE for TVM's paged KV cache on CPUs (``tir_split_rotary``).

TVM's kernel computes ``pow``, ``cos`` and ``sin`` for every (token, head, feature): 15 heads of 64
features is ~2,900 libm calls per token (~7 us per layer at decode, ~8 ms per layer for a 512-token
prefill, all on one thread). This one computes the cosines and sines of a token once (``head_dim
/ 2`` of them, with TVM's expressions, so the values are the same) and applies them to every head
with vector instructions; prefill runs tokens in parallel. Only the default (unscaled) RoPE of
float32 caches is served here; anything else gets TVM's kernel.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx
from tvm.relax.frontend.nn.llm import position_embedding as _pe
from tvm.script import tirx as T

PARALLEL_FROM = 4  # tokens; fewer run on the calling thread (a parallel launch costs more)


def split_rotary_cpu(theta: float, scale: float, head_dim: int, num_q_heads: int, num_kv_heads: int, dtype: str,
                     rope_scaling: dict[str, Any], rotary_dim: int | None = None):
    """``fused_rope(qkv, position_map, q, k, v, apply_rope)`` like ``llama_rope_with_position_map``."""
    if rope_scaling.get("rope_type") or rotary_dim not in (None, head_dim) or dtype != "float32" or head_dim % 2:
        return _pe.llama_rope_with_position_map(theta, scale, head_dim, num_q_heads, num_kv_heads, dtype, rope_scaling, rotary_dim)
    h_q, h_kv, d, half = num_q_heads, num_kv_heads, head_dim, head_dim // 2
    scale = tirx.const(scale, "float32")

    @T.macro
    def rotated_store(q, k, s, h, i, value):
        if h < h_q:
            q[s, h, i] = value
        else:
            k[s, h - h_q, i] = value

    @T.macro
    def token(qkv, position_map, q, k, v, apply_rope, s):
        with T.sblock("rope_token"):
            T.reads()
            T.writes()
            cs = T.sblock_alloc_buffer((half,), "float32")
            sn = T.sblock_alloc_buffer((half,), "float32")
            for i in T.serial(half):  # TVM's frequency expression (rope_freq_default) at feature i
                freq: T.let[T.float32] = position_map[s] * scale / T.pow(T.float32(theta), i * 2 % d / T.float32(d))
                cs[i] = T.cos(freq)
                sn[i] = T.sin(freq)
            for h in T.serial(h_q + h_kv):
                if apply_rope > 0:
                    for i in T.vectorized(half):
                        rotated_store(q, k, s, h, i, cs[i] * qkv[s, h, i] + sn[i] * -qkv[s, h, i + half])
                        rotated_store(q, k, s, h, i + half, cs[i] * qkv[s, h, i + half] + sn[i] * qkv[s, h, i])
                else:
                    for i in T.vectorized(d):
                        rotated_store(q, k, s, h, i, qkv[s, h, i])
            for h in T.serial(h_kv):
                for i in T.vectorized(d):
                    v[s, h, i] = qkv[s, h_q + h_kv + h, i]

    @T.prim_func(s_tir=True)
    def fused_rope(var_qkv: T.handle, var_position_map: T.handle, var_q: T.handle, var_k: T.handle,
                   var_v: T.handle, apply_rope: T.int64):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int32()
        position_map_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, h_q + 2 * h_kv, d), dtype)
        q = T.match_buffer(var_q, (seq_len, h_q, d), dtype)
        k = T.match_buffer(var_k, (seq_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (seq_len, h_kv, d), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        if seq_len >= PARALLEL_FROM:
            for s in T.parallel(seq_len):
                token(qkv, position_map, q, k, v, apply_rope, s)
        else:
            for s in T.serial(seq_len):
                token(qkv, position_map, q, k, v, apply_rope, s)

    return fused_rope
