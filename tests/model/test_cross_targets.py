"""Every target preset builds a package with a valid manifest; cross packages are refused here; the AVX2
package (another kernel path on this machine) gives the host package's greedy tokens."""

from __future__ import annotations

import tarfile

import pytest

from pdlink.compile.target import target_presets
from pdlink.common.package import PackageError, check_runnable_here, load_manifest
from tests.conftest import build_cached_package

pytestmark = [pytest.mark.model, pytest.mark.slow]
CROSS = [name for name, preset in target_presets().items() if preset.lib_format == "tar"]


@pytest.mark.parametrize("preset", CROSS)
def test_cross_target_builds_and_is_refused_here(preset):
    package = build_cached_package("q4_1", target=preset)
    manifest = load_manifest(package)
    assert manifest.target.preset == preset and manifest.target.lib_format == "tar"
    assert manifest.target.target == target_presets()[preset].target_json()
    with tarfile.open(package / manifest.library) as tar:
        members = tar.getnames()
    assert any(m.endswith(".o") for m in members), members
    with pytest.raises(PackageError):
        check_runnable_here(manifest.target)


def test_cross_package_gives_a_clear_error_from_the_cli(tmp_path):
    from tests.model.test_cli import _error, pdlink

    package = build_cached_package("q4_1", target="android-arm64")
    _error(pdlink("generate", "--package", package, "--prompt", "hi", "--json", check=False),
           "android-arm64", "cannot run on this machine")


def test_the_avx2_package_gives_the_host_packages_greedy_tokens(q4_1_package):
    """The avx2 word GEMV (8 words per vector, signed converts) against the host's path (avx512 here)."""
    from pdlink.compile.gemv_words import kernel_path
    from pdlink.edge.engine import Engine, EngineConfig
    from tests.conftest import device_answer

    preset = target_presets()["x86_64-avx2"]
    if not preset.runnable_here:
        pytest.skip("this CPU has no AVX2")
    assert kernel_path(preset.tvm_target()) == "avx2"
    answers = []
    for package in (q4_1_package, build_cached_package("q4_1", target="x86_64-avx2")):
        engine = Engine(EngineConfig(package=str(package), num_threads=2, max_num_sequences=1))
        ids = engine.tokenizer.encode_chat("Why is the sky blue? Answer in two sentences.")
        answers.append(device_answer(engine, ids, 24, ignore_eos=True).token_ids)
    assert answers[1] == answers[0]
