"""The Relax -> TIR compilation pipeline used for every target."""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.s_tir import dlight as dl

from pdlink.compile.schedule import schedule_elementwise, schedule_matmul_nt
from pdlink.common.package import MAX_BATCH_SIZE


def shape_upper_bounds(prefill_chunk_size: int) -> dict[str, int]:
    """Largest value of each symbolic dimension of the entry points (see ``LlamaForCausalLM.spec``).

    With them, Relax's memory planner gives every intermediate of a call one buffer sized for the
    largest call, reused by later calls and by later layers; without them each call with a new
    length allocates fresh buffers, and the pool keeps every size it has seen.
    """
    return {"seq_len": prefill_chunk_size, "batch_size": MAX_BATCH_SIZE}


def _annotate_upper_bounds(bounds: dict[str, int]):
    @tvm.transform.module_pass(opt_level=0, name="AnnotateUpperBounds")
    def annotate(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updates[gv] = func.with_attr("tir_var_upper_bound", bounds)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return annotate


@tvm.transform.module_pass(opt_level=0, name="MarkBuffersNoAlias")
def mark_buffers_noalias(mod: tvm.IRModule, _ctx) -> tvm.ir.IRModule:
    """Declare every kernel's buffer parameters distinct (``tirx.noalias``).

    TVM 0.27's LLVM code generator gives buffers their own alias information only when *every* function
    of the module carries this attribute; the paged-KV kernels and the shape functions do not, and
    without it LLVM could not keep a GEMM's accumulators in registers (each FMA stored them and reloaded
    the weights): every prefill matmul ran 2.5-2.9x slower than the same kernel compiled alone. The
    runtime passes distinct tensors to distinct parameters of every kernel (the KV cache's in-place
    kernels read and write one parameter, never two views of one tensor)."""
    updates = {gv: func.with_attr("tirx.noalias", True) for gv, func in mod.functions_items()
               if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.noalias", False)}
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def build_pipeline(target: tvm.target.Target, prefill_chunk_size: int, tuned: bool = True):
    """Default backend pipeline of ``target``, with planned memory for the entry points' largest
    shapes and (``tuned``, ``llvm`` targets) pdlink's CPU matmul schedule applied after fusion."""
    annotate = _annotate_upper_bounds(shape_upper_bounds(prefill_chunk_size))
    if target.kind.name != "llvm":
        return tvm.transform.Sequential([annotate, relax.get_default_pipeline(target)])
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    schedules = [dl.ApplyDefaultSchedule(schedule_matmul_nt, schedule_elementwise)] if tuned else []

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                [annotate]
                + cpu.library_dispatch_passes(target)
                + cpu.legalize_passes(target)
                + schedules
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
                + [mark_buffers_noalias]
            )
            return seq(mod)

    return _pipeline
