"""The distribution maps the design card's folders under ``pdlink`` and installs as a plain wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_plain_wheel_holds_everything_under_pdlink(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("pdlink-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("pdlink/cli/__init__.py", "pdlink/edge/engine.py", "pdlink/compile/model.py", "pdlink/common/protocol.py",
                     "pdlink/bench/engine.py", "pdlink/android_bridge/native/pdlink_run.cc", "pdlink/traces/__init__.py",
                     "pdlink/assistant/app.py", "pdlink/assistant/static/index.html"):
        assert expected in names, expected
    folders = {"pdlink": "pdlink", "common": "pdlink/common", "edge": "pdlink/edge", "cloud": "pdlink/cloud",
               "compile": "pdlink/compile", "traces": "pdlink/traces", "bench": "pdlink/bench", "sim": "pdlink/sim",
               "assistant": "pdlink/assistant", "android_bridge": "pdlink/android_bridge"}
    for folder, mapped in folders.items():  # every package folder of the checkout ships (a new one needs pyproject)
        for init in (ROOT / folder).rglob("__init__.py"):
            assert f"{mapped}/{init.relative_to(ROOT / folder).as_posix()}" in names, init
    top_level = {n.split("/")[0] for n in names}
    assert top_level <= {"pdlink"} | {n for n in top_level if n.endswith(".dist-info")}


def test_plain_wheel_imports_without_the_checkout(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target", str(tmp_path / "site"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    code = "import pdlink.edge.engine, pdlink.compile.target, pdlink.cli; print(pdlink.edge.engine.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(tmp_path / "site"))
