"""Compiled model packages: the manifest, and loading a package with every check the runtime needs.

A package is a directory::

    manifest.json        this module's Manifest (schema version, model, config, quantization, target,
                         entry points, tokenizer + chat template, sha256 of every file, config hash)
    model.so | model.tar the compiled library (``.tar`` = objects for a cross toolchain)
    params.safetensors   the weights, in the storage formats the library was compiled for
    tokenizer.json       HF tokenizers file

The runtime never imports the compiler: everything it needs to call the library is in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pdlink.common.model_config import LlamaConfig

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Most sequences in one batched call: libraries plan their buffers for it, the engine enforces it.
MAX_BATCH_SIZE = 256

# Entry points every package exports, as data: name -> ordered argument specs.
ENTRY_POINTS: dict[str, list[dict]] = {
    "prefill": [{"name": "input_ids", "shape": [1, "seq_len"], "dtype": "int32"}, {"name": "kv", "object": "kv_cache"}],
    "batch_prefill": [
        {"name": "input_ids", "shape": [1, "seq_len"], "dtype": "int32"},
        {"name": "logit_positions", "shape": ["batch_size"], "dtype": "int32"},
        {"name": "kv", "object": "kv_cache"},
    ],
    "decode": [{"name": "input_ids", "shape": [1, 1], "dtype": "int32"}, {"name": "kv", "object": "kv_cache"}],
    "batch_decode": [{"name": "input_ids", "shape": ["batch_size", 1], "dtype": "int32"}, {"name": "kv", "object": "kv_cache"}],
    "argmax": [{"name": "logits", "shape": ["batch_size", "vocab_size"], "dtype": "float32"}],
    "create_tir_paged_kv_cache": [
        {"name": n, "dtype": "int"}
        for n in ("max_batch_size", "max_total_seq_len", "prefill_chunk_size", "page_size", "support_sliding_window")
    ],
}


# How the runtime reads and writes one sequence's KV (compile/kv_exchange.py), recorded in the manifest's
# kv_cache section: packages built before KV export/import lack it and are refused with "recompile".
KV_IO = "exchange-v1"


class PackageError(ValueError):
    """The package cannot be used: missing, corrupt, tampered, or built for another machine."""


@dataclass(frozen=True)
class TargetInfo:
    """What the package was compiled for, and what a machine needs to run it."""

    preset: str
    target: dict
    os: str
    arch: str
    device_kind: str
    lib_format: str
    cpu_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """The package's ``manifest.json``."""

    schema_version: int
    pdlink_version: str
    model_name: str
    model_source: str
    architecture: str
    model_config: dict
    quantization: dict
    target: TargetInfo
    entry_points: dict
    library: str
    params_file: str
    param_names: list[str]
    tokenizer: dict
    kv_cache: dict
    files: dict[str, str] = field(default_factory=dict)
    config_hash: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PackageError(
                f"package schema version {version} is not supported by this pdlink (needs {SCHEMA_VERSION}); "
                "recompile the package with this pdlink version"
            )
        data["target"] = TargetInfo(**{**data["target"], "cpu_features": tuple(data["target"].get("cpu_features", ()))})
        return cls(**data)

    @property
    def config(self) -> LlamaConfig:
        return LlamaConfig.from_dict(self.model_config)


def config_hash(model_config: dict, quantization: dict, target: dict) -> str:
    """Hash of what determines the compiled code; equal hashes mean interchangeable libraries."""
    blob = json.dumps({"model": model_config, "quant": quantization, "target": target}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


_X86_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16")


def host_cpu_features() -> tuple[str, ...]:
    """Vector ISA extensions of this CPU that compiled code may rely on (Linux x86 only)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in _X86_FEATURES if f in flags)
    return ()


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def check_runnable_here(target: TargetInfo) -> None:
    """Raise PackageError unless this machine can load and run a package built for ``target``."""
    if target.lib_format != "so":
        raise PackageError(
            f"package was built for target {target.preset!r} ({target.os}/{target.arch}, {target.device_kind}) as "
            "object files for a cross toolchain; it cannot run on this machine. Compile with --target host."
        )
    if target.os != "linux" or target.arch != host_arch():
        raise PackageError(
            f"package is for {target.os}/{target.arch} but this machine is linux/{host_arch()}; "
            "compile with --target host"
        )
    if target.device_kind != "cpu":
        raise PackageError(f"package runs on {target.device_kind}, which this runtime build does not support")
    missing = sorted(set(target.cpu_features) - set(host_cpu_features()))
    if missing:
        raise PackageError(
            f"package needs CPU features {missing} that this CPU lacks (built for cpu "
            f"{target.target.get('mcpu')!r}); compile with --target host on this machine"
        )


def load_manifest(package_dir: str | Path, verify_hashes: bool = True) -> Manifest:
    """Read and check a package's manifest and files.

    Raises PackageError when the directory or manifest is missing or unreadable, a file is missing,
    or (with ``verify_hashes``) any file's sha256 differs from the manifest's.
    """
    root = Path(package_dir)
    if not root.is_dir():
        raise PackageError(f"package directory {str(root)!r} does not exist; build one with `pdlink compile`")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise PackageError(f"{root} has no {MANIFEST}: not a pdlink package (build one with `pdlink compile`)")
    try:
        manifest = Manifest.from_json(manifest_path.read_text())
    except PackageError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise PackageError(f"{manifest_path} is corrupt: {exc}") from exc
    expected = config_hash(manifest.model_config, manifest.quantization, manifest.target.target)
    if manifest.config_hash != expected:
        raise PackageError(f"{manifest_path}: config hash mismatch (manifest was edited); recompile the package")
    for name, digest in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise PackageError(f"package file {name} is missing from {root}")
        if verify_hashes and sha256_file(path) != digest:
            raise PackageError(f"package file {name} does not match its sha256 in the manifest (corrupt or tampered)")
    return manifest
