"""The elementwise schedule (fused activations, casts, adds) runs in parallel vectors and computes what the
unscheduled function computes; it leaves reductions and odd widths alone."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from pdlink.compile.schedule import schedule_elementwise

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"})


def _swiglu(width: int):
    """Prefill's fused split + SiLU + multiply over ``[1, n, 2 * width]`` with a symbolic ``n``."""
    n = tirx.Var("n", "int64")
    gate_up = te.placeholder((1, n, 2 * width), "float32", name="gate_up")
    out = te.compute((1, n, width), lambda b, i, j: te.sigmoid(gate_up[b, i, j]) * gate_up[b, i, j] * gate_up[b, i, j + width],
                     name="swiglu")
    return te.create_prim_func([gate_up, out])


def _scheduled(func):
    sch = schedule_elementwise.apply(func, TARGET, False)
    return None if sch is None else sch.mod["main"]


def test_swiglu_runs_parallel_vectors_and_matches_the_unscheduled_function():
    func = _swiglu(64)
    scheduled = _scheduled(func)
    script = scheduled.script()
    assert "T.parallel" in script and "T.vectorized" in script
    x = np.random.default_rng(0).standard_normal((1, 37, 128)).astype(np.float32)
    outs = []
    for f in (func, scheduled):
        kernel = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=TARGET)["main"]
        out = tvm.runtime.tensor(np.zeros((1, 37, 64), np.float32))
        kernel(tvm.runtime.tensor(x), out)
        outs.append(out.numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)


def test_small_static_functions_stay_serial_and_odd_widths_or_reductions_are_left_alone():
    a = te.placeholder((1, 576), "float32", name="a")
    small = _scheduled(te.create_prim_func([a, te.compute((1, 576), lambda i, j: a[i, j] * 2.0, name="double")]))
    assert "T.vectorized" in small.script() and "T.parallel" not in small.script()
    odd = te.placeholder((1, 20), "float32", name="odd")
    assert _scheduled(te.create_prim_func([odd, te.compute((1, 20), lambda i, j: odd[i, j] + 1.0, name="inc")])) is None
    k = te.reduce_axis((0, 576), name="k")
    total = te.compute((1,), lambda i: te.sum(a[i, k], axis=k), name="total")
    assert _scheduled(te.create_prim_func([a, total])) is None
