"""Every target preset builds a package with a valid manifest; cross packages are refused here."""

from __future__ import annotations

import tarfile

import pytest

from pdlink.compile.target import target_presets
from pdlink.common.package import PackageError, check_runnable_here, load_manifest
from tests.conftest import build_cached_package

pytestmark = [pytest.mark.model, pytest.mark.slow]
CROSS = [name for name in target_presets() if name != "host"]


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
