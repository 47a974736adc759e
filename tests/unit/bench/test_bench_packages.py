"""Every benchmark builds its package through one helper; the callers that name no target get this host's."""

from pathlib import Path

import pdlink.compile.builder as builder
from pdlink.bench.engine import _ensure_package


def test_the_package_helper_defaults_to_the_host_target(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(builder, "build_package", lambda cfg: built.append(cfg))
    monkeypatch.setattr(builder, "compiler_fingerprint", lambda: "fp")
    out = _ensure_package("q4_1", tmp_path)  # as bench session, trace replay and assistant call it
    assert out == Path(tmp_path) / "smollm2-135m-q4_1-host-fp"
    assert [(c.target, c.quant, c.output) for c in built] == [("host", "q4_1", str(out))]
    _ensure_package("q4_1", tmp_path, "linux-arm64")
    assert built[-1].target == "linux-arm64"
