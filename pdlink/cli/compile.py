"""``pdlink compile``: a model into a package for a target."""

from __future__ import annotations

from pdlink.cli.flags import add_flags, flag_values
from pdlink.compile.builder import CompileConfig, build_package

FLAGS = ("model", "target", "quant", "prefill_chunk_size", "kv_dtype")


def add_arguments(p) -> None:
    add_flags(p, CompileConfig, FLAGS, helps={"model": "smollm2-135m, a .gguf file, or an HF model directory",
                                              "target": "target preset (see `pdlink targets`)",
                                              "quant": "f32, f16, q4f16, q4f32, q4_1",
                                              "kv_dtype": "KV pages: f16, f32 or auto (f32 for --quant f32, else f16)"})
    p.add_argument("--output", "-o", required=True, help="package directory to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    build_package(CompileConfig(**flag_values(args, FLAGS), output=args.output, show_progress=not args.quiet))
    return 0
