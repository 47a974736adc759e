"""``pdlink compile``: checkpoint -> compiled model package (see :mod:`pdlink.common.package`)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import pdlink
from pdlink.compile.checkpoint import open_checkpoint
from pdlink.compile.params import iter_params
from pdlink.compile.quantization import get_quantization, resolve_kv_dtype
from pdlink.compile.target import TargetPreset, get_target_preset
from pdlink.common.package import (
    ENTRY_POINTS,
    KV_IO,
    MANIFEST,
    SCHEMA_VERSION,
    Manifest,
    PackageError,
    TargetInfo,
    config_hash,
    host_cpu_features,
    sha256_file,
)
from pdlink.common.tvm_runtime import require_compiler

PARAMS_FILE = "params.safetensors"


@dataclass(frozen=True)
class CompileConfig:
    """Everything ``pdlink compile`` needs; validated on creation (errors say how to fix them)."""

    model: str
    target: str = "host"
    quant: str = "q4_1"
    output: str = "packages/smollm2-135m-q4_1-host"
    prefill_chunk_size: int = 2048
    page_size: int = 16
    show_progress: bool = True
    tuned: bool = True  # False: plain matmul kernels, unscheduled (to check tuning keeps the answers)
    kv_dtype: str = "auto"  # KV pages: f16, f32, or auto (f32 for --quant f32, f16 otherwise)

    def __post_init__(self):
        get_target_preset(self.target)
        resolve_kv_dtype(self.kv_dtype, get_quantization(self.quant))
        if self.prefill_chunk_size < 16:
            raise ValueError("--prefill-chunk-size must be at least 16")
        if self.page_size not in (8, 16, 32, 64):
            raise ValueError("--page-size must be one of 8, 16, 32, 64")


def compiler_fingerprint() -> str:
    """Short hash of the compiler sources and the package format: caches of built packages are keyed by it."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in [*sorted((root / "compile").glob("*.py")), root / "common" / "package.py", root / "common" / "model_config.py"]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / MANIFEST).exists())):
        raise PackageError(f"output {output} exists and is not a pdlink package; choose an empty or new directory")


def _cpu_features(preset: TargetPreset) -> tuple[str, ...]:
    # A host build with this machine's mcpu may use every extension it has; other presets name theirs.
    return host_cpu_features() if preset.name == "host" and preset.arch == "x86_64" else preset.cpu_features


class _Steps:
    """A progress bar over the build's steps (silent when ``show`` is false)."""

    def __init__(self, show: bool, total: int):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=Console(stderr=True), disable=not show,
        )
        self.total = total

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("compile", total=self.total)
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def step(self, description: str, advance: int = 1):
        self.progress.update(self.task, description=description, advance=advance)


def _convert_params(ckpt, quant, names: list[str], out: Path, steps: _Steps) -> None:
    from safetensors.numpy import save_file

    arrays = {}
    for name, arr in iter_params(ckpt, quant):
        arrays[name] = arr
        steps.step(f"convert {name}", advance=0)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise PackageError(f"checkpoint conversion produced no value for {missing[:3]}")
    save_file({n: arrays[n] for n in names}, str(out / PARAMS_FILE))


def _export_library(ex, preset: TargetPreset, out: Path) -> str:
    library = f"model.{preset.lib_format}"
    ex.export_library(str(out / library))
    return library


def build_package(cfg: CompileConfig) -> Path:
    """Compile ``cfg.model`` for ``cfg.target`` into the package directory ``cfg.output``.

    The package is built in a sibling temporary directory and moved into place only when complete.
    Raises CheckpointError for an unusable model path, ValueError for unknown target/quant, and
    PackageError when the output directory holds something else.
    """
    output = Path(cfg.output)
    _check_output(output)
    ckpt = open_checkpoint(cfg.model)
    started = time.time()
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        with _Steps(cfg.show_progress, total=5) as steps:
            _build_into(cfg, ckpt, work, steps)
        if output.exists():
            shutil.rmtree(output)
        work.chmod(0o755)
        work.rename(output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    Console(stderr=True).print(f"package {output} ({cfg.target}, {cfg.quant}) built in {time.time() - started:.0f}s")
    return output


def _build_into(cfg: CompileConfig, ckpt, work: Path, steps: _Steps) -> None:
    require_compiler()
    from tvm import relax

    from pdlink.compile.model import LlamaForCausalLM
    from pdlink.compile.pipeline import build_pipeline

    preset, quant = get_target_preset(cfg.target), get_quantization(cfg.quant)
    steps.step("export model")
    target = preset.tvm_target()
    kv_dtype = resolve_kv_dtype(cfg.kv_dtype, quant)
    model = LlamaForCausalLM(ckpt.config, quant, target, tuned=cfg.tuned, kv_dtype=kv_dtype)
    mod, named = model.export_tvm(spec=model.spec())
    names = [n for n, _ in named]
    steps.step("convert weights")
    _convert_params(ckpt, quant, names, work, steps)
    steps.step(f"compile for {preset.name}")
    pipeline = build_pipeline(target, cfg.prefill_chunk_size, tuned=cfg.tuned)
    ex = relax.build(mod, target=target, relax_pipeline=pipeline, system_lib=preset.system_lib or None)
    library = _export_library(ex, preset, work)
    steps.step("tokenizer")
    tokenizer = ckpt.save_tokenizer(work)
    steps.step("manifest")
    manifest = _manifest(cfg, ckpt, preset, quant, kv_dtype, library, names, tokenizer, work)
    (work / MANIFEST).write_text(manifest.to_json())


def _manifest(cfg, ckpt, preset, quant, kv_dtype: str, library, names, tokenizer, work: Path) -> Manifest:
    model_config = ckpt.config.to_dict()
    # the KV dtype changes the numbers, so the config hash covers it (packages from before hash without it)
    quantization = {"name": quant.name, "linear": quant.linear, "embedding": quant.embedding, "kv_cache": kv_dtype}
    target_json = preset.target_json()
    files = {p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.is_file()}
    return Manifest(
        schema_version=SCHEMA_VERSION,
        pdlink_version=pdlink.__version__,
        model_name=ckpt.name,
        model_source=cfg.model,
        architecture="llama",
        model_config=model_config,
        quantization=quantization,
        target=TargetInfo(
            preset=preset.name,
            target=target_json,
            os=preset.os,
            arch=preset.arch,
            device_kind=preset.device_kind,
            lib_format=preset.lib_format,
            cpu_features=_cpu_features(preset),
        ),
        entry_points=json.loads(json.dumps(ENTRY_POINTS)),
        library=library,
        params_file=PARAMS_FILE,
        param_names=names,
        tokenizer=tokenizer,
        kv_cache={"page_size": cfg.page_size, "prefill_chunk_size": cfg.prefill_chunk_size, "dtype": kv_dtype,
                  "kv_io": KV_IO},
        files=files,
        config_hash=config_hash(model_config, quantization, target_json),
    )
