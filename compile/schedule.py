"""CPU schedules for the kernels the default TVM pipeline leaves naive.

The weight matmul (see ``FormattedMatrix.matmul_nt``) is computed as ``LANES`` partial sums per
output. Its schedule:

    for o_tile   (parallel)             # a tile of output rows: its weights stay in cache
      for i_tile                        # all activation rows, I_TILE at a time
        for o in o_tile
          for ko                        # reduction, LANES elements at a time
            for i in i_tile (unrolled)  # each dequantized weight vector reused I_TILE times
              for lane (vectorized)
        final sum over lanes, then any fused elementwise epilogue
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

LANES = 16
PARTIAL_BLOCK = "matmul_nt_partial"
SUM_BLOCK = "matmul_nt"
I_TILE = 4
O_TILE = 16


def _block_names(sch: s_tir.Schedule) -> list[str]:
    """Names of the top-level blocks of the function, in order."""
    root = sch.get_sblock("root")
    return [sch.get(block).name_hint for block in sch.get_child_blocks(root)]


@dl.ScheduleRule.from_callable("pdlink_matmul_nt")
def schedule_matmul_nt(func: tirx.PrimFunc, target, _tunable: bool):
    """Schedule a function that contains the partial-sum weight matmul; None for other functions."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    names = _block_names(sch)
    if PARTIAL_BLOCK not in names or SUM_BLOCK not in names:
        return None
    partial, final = sch.get_sblock(PARTIAL_BLOCK), sch.get_sblock(SUM_BLOCK)
    i, o, lane, ko = sch.get_loops(partial)
    o_outer, o_inner = sch.split(o, [None, O_TILE])
    i_outer, i_inner = sch.split(i, [None, I_TILE])
    sch.reorder(o_outer, i_outer, o_inner, ko, i_inner, lane)
    sch.parallel(o_outer)
    sch.reverse_compute_at(final, o_inner)
    for name in names:
        if name not in (PARTIAL_BLOCK, SUM_BLOCK):
            sch.reverse_compute_at(sch.get_sblock(name), o_inner)
    sch.set_scope(partial, 0, "local")
    sch.unroll(i_inner)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, ko)
    return sch
