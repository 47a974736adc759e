"""CPU schedules for the weight matmuls (see ``FormattedMatrix.matmul_nt``).

GEMV (one row, decode)::

    for o_tile (parallel)                  # O_TILE output rows
      for o in o_tile
        d[:], m[:] = f32(scales of row o)  # per-block parameters widened once per row (vector converts)
        for g                              # width = GEMV_ACC_BLOCKS whole blocks of the row, in order
          for acc (unrolled)               # independent accumulators (no chain of dependent FMAs)
            for lane (vectorized)          # partial[c] += x[k] * W(o, k), c = acc * LANES + lane
        out[o] = tree sum of partial[:]    # log2(width) levels of adds, then any fused epilogue

GEMM (rows padded to a multiple of ROW_TILE: prefill, batches)::

    for o_tile (parallel)                  # GEMM_O_TILE outputs = one vector register
      Wt[k, o] = W(o_tile + o, k)          # dequantize the tile once, transposed
      for i_tile                           # ROW_TILE rows at a time
        for k
          for i in i_tile (unrolled)       # acc[i, :] += x[i, k] * Wt[k, :]
            for o (vectorized)
        write acc (unpad), then any fused elementwise epilogue
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

LANES = 16
PARTIAL_BLOCK = "matmul_nt_partial"
SUM_BLOCK = "matmul_nt"
BLOCK_PARAMS_BLOCK = "block_params_f32"
O_TILE = 32
GEMV_ACC_BLOCKS = 2
PAD_BLOCK = "pad_rows"
DEQUANT_BLOCK = "dequant_w"
GEMM_BLOCK = "matmul_nt_gemm"
UNPAD_BLOCK = "unpad_rows"
ROW_TILE = 8
GEMM_O_TILE = 16


def _block_names(sch: s_tir.Schedule) -> list[str]:
    """Names of the top-level blocks of the function, in order."""
    root = sch.get_sblock("root")
    return [sch.get(block).name_hint for block in sch.get_child_blocks(root)]


@dl.ScheduleRule.from_callable("pdlink_matmul_nt")
def schedule_matmul_nt(func: tirx.PrimFunc, target, _tunable: bool):
    """Schedule a function holding a weight matmul (GEMV or GEMM form); None for other functions."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    names = _block_names(sch)
    if PARTIAL_BLOCK in names and SUM_BLOCK in names:
        at = names.index(PARTIAL_BLOCK)
        _schedule_gemv(sch, [n for n in names[:at] if n.startswith(BLOCK_PARAMS_BLOCK)], names[at + 1 :])
        return sch
    if GEMM_BLOCK in names and DEQUANT_BLOCK in names:
        _schedule_gemm(sch, [n for n in names if n not in (PAD_BLOCK, DEQUANT_BLOCK, GEMM_BLOCK)])
        return sch
    return None


def _schedule_gemv(sch: s_tir.Schedule, producers: list[str], consumers: list[str]) -> None:
    """``producers``: per-row block-parameter conversions; ``consumers``: the sum over lanes
    (first), then any fused epilogue."""
    total = sch.get_sblock(consumers[0])
    _, o = sch.get_loops(total)
    o_outer, o_inner = sch.split(o, [None, O_TILE])
    sch.parallel(o_outer)
    for name in consumers[1:]:
        sch.reverse_compute_at(sch.get_sblock(name), o_inner)
    partial = sch.get_sblock(PARTIAL_BLOCK)
    sch.compute_at(partial, o_inner)
    for name in producers:
        block = sch.get_sblock(name)
        sch.compute_at(block, o_inner)
        sch.set_scope(block, 0, "local")
        sch.vectorize(sch.get_loops(block)[-1])
    sch.set_scope(partial, 0, "local")
    c, g = sch.get_loops(partial)[-2:]
    acc, lane = sch.split(c, [None, LANES])
    sch.reorder(g, acc, lane)
    sch.unroll(acc)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, g)


def _schedule_gemm(sch: s_tir.Schedule, epilogue: list[str]) -> None:
    gemm, dequant = sch.get_sblock(GEMM_BLOCK), sch.get_sblock(DEQUANT_BLOCK)
    i, o, k = sch.get_loops(gemm)
    o_outer, o_inner = sch.split(o, [None, GEMM_O_TILE])
    i_outer, i_inner = sch.split(i, [None, ROW_TILE])
    sch.reorder(o_outer, i_outer, k, i_inner, o_inner)
    acc = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc, i_outer)
    for name in epilogue:  # the unpad copy first, then fused elementwise ops, all per row tile
        sch.reverse_compute_at(sch.get_sblock(name), i_outer)
    sch.compute_at(dequant, o_outer)
    sch.transform_layout(dequant, ("write", 0), lambda row, col: (col, row))
    dq_o, dq_k = sch.get_loops(dequant)[-2:]
    sch.reorder(dq_k, dq_o)
    sch.parallel(o_outer)
    sch.unroll(i_inner)
    sch.vectorize(o_inner)
    sch.decompose_reduction(gemm, k)
    sch.vectorize(sch.get_loops(acc)[-1])


# Below this many elements a parallel launch costs more than it saves (decode's [1, 1, hidden] ops).
PARALLEL_MIN_ELEMENTS = 1 << 15


@dl.ScheduleRule.from_callable("pdlink_elementwise")
def schedule_elementwise(func: tirx.PrimFunc, target, _tunable: bool):
    """Schedule a function of spatial blocks only (fused activations, casts, adds): producers inlined,
    the outer loops of the output fused and run in parallel, the last loop vectorized. TVM's CPU pipeline
    leaves such functions as serial scalar loops (prefill's SwiGLU took 9% of a 512-token prefill).
    None for functions with a reduction or a last loop that does not split into vectors."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    if not blocks or any(not _is_spatial(sch, b) for b in blocks):
        return None
    for block in blocks[:-1]:
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a producer that cannot be inlined: leave the function as it is
            return None
    loops = sch.get_loops(blocks[-1])
    inner = sch.get(loops[-1]).extent
    if not isinstance(inner, tirx.IntImm) or inner.value % LANES:
        return None
    extent = 1
    for loop in loops:
        e = sch.get(loop).extent
        extent = extent * e.value if isinstance(e, tirx.IntImm) and extent is not None else None
    outer, lanes = sch.split(loops[-1], [None, LANES])
    sch.vectorize(lanes)
    spatial = [*loops[:-1], outer]
    if extent is None or extent >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    return sch


def _is_spatial(sch: s_tir.Schedule, block) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)
