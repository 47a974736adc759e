"""Dependencies point one way: the device side never loads the cloud's server side, torch, transformers,
the compiler or the benchmarks; ``compile`` and ``common`` never import the device or the cloud."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_ON_DEVICE = ("pdlink.cloud", "pdlink.compile", "pdlink.bench", "torch", "transformers", "tvm.relax")

DEVICE_ENTRY_POINTS = """
import contextlib, io, json, sys
from pdlink.edge.engine import Engine
from pdlink.edge.session import Session
from pdlink.edge.chat import Conversation
from pdlink.assistant.app import create_app
from pdlink.cli import main
for argv in (["generate", "--help"], ["chat", "--help"], ["serve", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps(sorted(sys.modules)))
"""


def test_device_entry_points_and_their_commands_load_no_cloud_server_torch_compiler_or_bench():
    proc = subprocess.run([sys.executable, "-c", DEVICE_ENTRY_POINTS], capture_output=True, text=True, timeout=120,
                          check=True)
    loaded = json.loads(proc.stdout)
    bad = [m for m in loaded if m.startswith(FORBIDDEN_ON_DEVICE)]
    assert not bad, f"the device side loaded {bad}"
    assert "pdlink.edge.session" in loaded and "pdlink.cli.generate" in loaded and "pdlink.cli.serve" in loaded


def _imports(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_each_folder_imports_only_what_sits_below_it():
    for folder, allowed in (("common", ("pdlink.common",)), ("compile", ("pdlink.common", "pdlink.compile")),
                            ("edge", ("pdlink.common", "pdlink.edge")),
                            ("assistant", ("pdlink.common", "pdlink.edge", "pdlink.assistant")), ("traces", ("pdlink.common", "pdlink.traces")),
                            ("sim", ("pdlink.common", "pdlink.edge", "pdlink.traces", "pdlink.sim", "pdlink.cloud"))):
        ours = {m for m in _imports(folder) if m.startswith("pdlink.")}
        assert all(m.startswith(allowed) for m in ours), f"{folder}/ imports {sorted(ours)}"
