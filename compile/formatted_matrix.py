"""A weight matrix in a storage format, and the tensor-expression forms of its matmul.

Every matrix multiply reads its weight through the format's element reader, so dequantization is
fused into the matmul kernel and 4-bit weights stay 4-bit in memory. The forms are shaped for the
schedules in :mod:`pdlink.compile.schedule` (which find them by block name); see ``matmul_forms``.
"""

from __future__ import annotations

import contextlib
import contextvars

from tvm import te, tirx
from tvm.relax.frontend import nn

from pdlink.compile.gemv_words import kernel_path, supports_word_gemv, word_gemv
from pdlink.compile.schedule import (
    BLOCK_PARAMS_BLOCK,
    DEQUANT_BLOCK,
    GEMM_BLOCK,
    GEMV_ACC_BLOCKS,
    LANES,
    PAD_BLOCK,
    PARTIAL_BLOCK,
    ROW_TILE,
    SUM_BLOCK,
    UNPAD_BLOCK,
)
from pdlink.compile.weight_format import GROUP, WeightFormat

# The matmul form of matrices made now (see ``matmul_forms``).
_FORM = contextvars.ContextVar("pdlink_matmul_form", default=("cpu", None))
FORMS = ("cpu", "portable", "plain")


@contextlib.contextmanager
def matmul_forms(form: str, target=None):
    """Matrices created inside get ``form``: "cpu" (shaped for pdlink's CPU schedules),
    "portable" (lane-interleaved GEMV that dlight's GPU rules schedule) or "plain" (one sum per
    output, unscheduled: the untuned reference). With "cpu", a ``target`` with a vector kernel path
    (AVX-512, AVX2, NEON) gives block-quantized matrices the shuffle-free GEMV of
    :mod:`pdlink.compile.gemv_words` for single rows."""
    if form not in FORMS:
        raise ValueError(f"unknown matmul form {form!r}; choose one of {FORMS}")
    token = _FORM.set((form, target))
    try:
        yield
    finally:
        _FORM.reset(token)


class FormattedMatrix(nn.Module):
    """A ``[out, in]`` weight matrix stored in a :class:`WeightFormat`."""

    def __init__(self, out_features: int, in_features: int, fmt: WeightFormat):
        self.out_features, self.in_features, self.fmt = out_features, in_features, fmt
        self.form, target = _FORM.get()
        self.use_word_gemv = self.form == "cpu" and supports_word_gemv(fmt.name, in_features, target)
        self.gemv_path = kernel_path(target) if self.use_word_gemv else None
        self.suffixes = []
        for suffix, (shape, dtype) in fmt.array_specs(out_features, in_features).items():
            setattr(self, suffix, nn.Parameter(shape, dtype))
            self.suffixes.append(suffix)

    def _arrays(self) -> list[nn.Tensor]:
        return [getattr(self, s) for s in self.suffixes]

    def matmul_nt(self, x: nn.Tensor, name: str) -> nn.Tensor:
        """``x @ W.T`` for ``x`` of shape ``[rows, in]`` -> ``[rows, out]`` (float32).

        One row (decode) of a block-quantized matrix on a target with a vector kernel path is the GEMV of
        :mod:`pdlink.compile.gemv_words`. Any other single row is a GEMV: each output row is read in order, whole quantization blocks at
        a time, into independent vector accumulators (per-block scales widened to float32 once per
        row), then summed as a tree; the schedule vectorizes straight from the packed weights. More
        rows (prefill, batches) are a
        GEMM over rows padded to a multiple of ``ROW_TILE`` (no bounds checks in the inner loop),
        reading a dequantized weight tile. Both are scheduled in :mod:`pdlink.compile.schedule`.
        """
        suffixes, fmt, n_in, n_out = self.suffixes, self.fmt, self.in_features, self.out_features
        single_row = isinstance(x.shape[0], int) and x.shape[0] == 1
        form = self.form
        if single_row and self.use_word_gemv:
            return self._word_gemv(x, name, swiglu=False)

        def compute(xt: te.Tensor, *arrays: te.Tensor):
            named = dict(zip(suffixes, arrays))
            if form == "plain":
                return _plain_matmul(xt, lambda o, k: fmt.element(named, o, k), n_in, n_out)
            if single_row and form == "cpu":
                named = {s: _widened_block_params(a, n_in) for s, a in named.items()}
            element = lambda o, k: fmt.element(named, o, k)  # noqa: E731
            if not single_row:
                return _gemm(xt, element, n_in, n_out)
            return _gemv(xt, element, n_in, n_out) if form == "cpu" else _gemv_lanes(xt, element, n_in, n_out)

        return nn.tensor_expr_op(compute, name, [x, *self._arrays()])

    def matmul_swiglu(self, x: nn.Tensor, name: str) -> nn.Tensor | None:
        """``silu(gate) * up`` of the two halves of ``x @ W.T``, ``[1, out / 2]``, in one kernel
        for a single row on hosts with the word GEMV; None where that kernel does not apply."""
        if not (self.use_word_gemv and isinstance(x.shape[0], int) and x.shape[0] == 1):
            return None
        return self._word_gemv(x, name, swiglu=True)

    def _word_gemv(self, x: nn.Tensor, name: str, swiglu: bool) -> nn.Tensor:
        n_in, n_out = self.in_features, self.out_features
        scale_dtype = self.fmt.array_specs(n_out, n_in)["scale"][1]
        func = word_gemv(self.fmt.name, n_in, n_out, scale_dtype, swiglu=swiglu, path=self.gemv_path)
        out = nn.Tensor.placeholder((1, n_out // 2 if swiglu else n_out), "float32")
        return nn.tensor_ir_op(func, name, [x, *self._arrays()], out)

    def rows(self, ids: nn.Tensor, name: str) -> nn.Tensor:
        """Rows ``W[ids]`` as float32 ``[len(ids), in]`` (embedding lookup)."""
        suffixes, fmt, n_in = self.suffixes, self.fmt, self.in_features

        def compute(idt: te.Tensor, *arrays: te.Tensor):
            named = dict(zip(suffixes, arrays))
            return te.compute((idt.shape[0], n_in), lambda i, k: fmt.element(named, idt[i], k), name="take_rows")

        return nn.tensor_expr_op(compute, name, [ids, *self._arrays()])


def _widened_block_params(a: te.Tensor, n_in: int) -> te.Tensor:
    """Per-block float16 scales/minimums as float32, converted a row at a time (vector converts)
    rather than once per block inside the GEMV's inner loop."""
    if a.dtype != "float16" or int(a.shape[1]) != n_in // GROUP:
        return a
    return te.compute(a.shape, lambda o, g: a[o, g].astype("float32"), name=f"{BLOCK_PARAMS_BLOCK}_{a.op.name}")


def _gemv(x: te.Tensor, element, n_in: int, n_out: int) -> te.Tensor:
    # Lane c of a row's accumulators sums k = g * width + c: the row is read in order, ``width``
    # elements (whole quantization blocks) per step of g, into independent vector accumulators,
    # which are then added up as a tree (a chain of ``width`` dependent adds would be slow).
    groups = n_in // GROUP
    width = GROUP * next(a for a in (GEMV_ACC_BLOCKS, 2, 1) if groups % a == 0)
    g = te.reduce_axis((0, n_in // width), name="g")
    partial = te.compute(
        (n_out, width), lambda o, c: te.sum(x[0, g * width + c] * element(o, g * width + c), axis=g), name=PARTIAL_BLOCK
    )
    return te.compute((1, n_out), lambda i, o: _tree_sum([partial[o, c] for c in range(width)]), name=SUM_BLOCK)


def _gemv_lanes(x: te.Tensor, element, n_in: int, n_out: int) -> te.Tensor:
    """``LANES`` interleaved partial sums per output, then their sum (the form dlight's GPU GEMV
    rule schedules)."""
    ko = te.reduce_axis((0, n_in // LANES), name="ko")
    partial = te.compute(
        (x.shape[0], n_out, LANES),
        lambda i, o, lane: te.sum(x[i, ko * LANES + lane] * element(o, ko * LANES + lane), axis=ko),
        name=PARTIAL_BLOCK,
    )
    lane = te.reduce_axis((0, LANES), name="lane")
    return te.compute((x.shape[0], n_out), lambda i, o: te.sum(partial[i, o, lane], axis=lane), name=SUM_BLOCK)


def _tree_sum(terms: list):
    while len(terms) > 1:
        half = len(terms) // 2
        terms = [terms[j] + terms[j + half] for j in range(half)]
    return terms[0]


def _plain_matmul(x: te.Tensor, element, n_in: int, n_out: int) -> te.Tensor:
    """The untuned form: one sum over ``in`` per output, left to TVM's default lowering."""
    k = te.reduce_axis((0, n_in), name="k")
    return te.compute((x.shape[0], n_out), lambda i, o: te.sum(x[i, k] * element(o, k), axis=k), name="matmul_plain")


def _gemm(x: te.Tensor, element, n_in: int, n_out: int) -> te.Tensor:
    rows = x.shape[0]
    padded = (rows + ROW_TILE - 1) // ROW_TILE * ROW_TILE
    zero = tirx.const(0, "float32")
    x_pad = te.compute((padded, n_in), lambda i, k: tirx.if_then_else(i < rows, x[i, k], zero), name=PAD_BLOCK)
    weight = te.compute((n_out, n_in), element, name=DEQUANT_BLOCK)
    k = te.reduce_axis((0, n_in), name="k")
    y_pad = te.compute((padded, n_out), lambda i, o: te.sum(x_pad[i, k] * weight[o, k], axis=k), name=GEMM_BLOCK)
    return te.compute((rows, n_out), lambda i, o: y_pad[i, o], name=UNPAD_BLOCK)
