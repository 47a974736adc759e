"""Manifest checks on hand-made packages (no model, no compiler)."""

import json

import pytest

from pdlink.common.package import (
    ENTRY_POINTS,
    MANIFEST,
    SCHEMA_VERSION,
    Manifest,
    PackageError,
    TargetInfo,
    check_runnable_here,
    config_hash,
    host_arch,
    load_manifest,
    sha256_file,
)

CONFIG = {"vocab_size": 8, "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 1, "num_key_value_heads": 1, "context_window_size": 16}


def _target(**overrides):
    base = dict(preset="host", target={"kind": "llvm"}, os="linux", arch=host_arch(), device_kind="cpu", lib_format="so")
    return TargetInfo(**{**base, **overrides})


def make_package(tmp_path, target=None):
    (tmp_path / "model.so").write_bytes(b"library")
    (tmp_path / "params.safetensors").write_bytes(b"params")
    target = target or _target()
    quant = {"name": "f32"}
    files = {n: sha256_file(tmp_path / n) for n in ("model.so", "params.safetensors")}
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, pdlink_version="0", model_name="tiny", model_source="x", architecture="llama",
        model_config=CONFIG, quantization=quant, target=target, entry_points=ENTRY_POINTS, library="model.so",
        params_file="params.safetensors", param_names=[], tokenizer={}, kv_cache={}, files=files,
        config_hash=config_hash(CONFIG, quant, target.target),
    )
    (tmp_path / MANIFEST).write_text(manifest.to_json())
    return tmp_path


def test_round_trip(tmp_path):
    manifest = load_manifest(make_package(tmp_path))
    assert manifest.config.vocab_size == 8 and manifest.target.preset == "host"


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(PackageError, match="not a pdlink package"):
        load_manifest(tmp_path)


def test_tampered_file_is_refused(tmp_path):
    make_package(tmp_path)
    (tmp_path / "params.safetensors").write_bytes(b"evil")
    with pytest.raises(PackageError, match="sha256"):
        load_manifest(tmp_path)


def test_missing_file_is_refused(tmp_path):
    make_package(tmp_path)
    (tmp_path / "model.so").unlink()
    with pytest.raises(PackageError, match="missing"):
        load_manifest(tmp_path)


def test_edited_manifest_and_other_schema_are_refused(tmp_path):
    make_package(tmp_path)
    data = json.loads((tmp_path / MANIFEST).read_text())
    data["model_config"]["num_hidden_layers"] = 2
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="config hash"):
        load_manifest(tmp_path)
    data["schema_version"] = 99
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="schema version 99"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(PackageError, match="corrupt"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"preset": "android-arm64", "os": "android", "arch": "aarch64", "lib_format": "tar"}, "cannot run on this machine"),
        ({"arch": "riscv64"}, "compile with --target host"),
        ({"device_kind": "cuda"}, "does not support"),
        ({"cpu_features": ("avx512_imaginary",)}, "lacks"),
    ],
)
def test_package_for_another_machine_is_refused(overrides, message):
    with pytest.raises(PackageError, match=message):
        check_runnable_here(_target(**overrides))
