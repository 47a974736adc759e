"""The Relax -> TIR compilation pipeline used for every target."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from pdlink.compile.schedule import schedule_matmul_nt


def build_pipeline(target: tvm.target.Target):
    """Default backend pipeline of ``target`` with pdlink's CPU matmul schedule applied after fusion."""
    base = relax.get_default_pipeline(target)
    if target.kind.name != "llvm":
        return base
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target)
                + cpu.legalize_passes(target)
                + [dl.ApplyDefaultSchedule(schedule_matmul_nt)]
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline
