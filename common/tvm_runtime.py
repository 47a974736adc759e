"""Loading TVM for running packages: the runtime library only, and without torch.

``import tvm`` in a fresh process loads the whole compiler (``libtvm_compiler.so``, ~250 MB of
code and data) and, through ``tvm_ffi``, imports torch when it is installed: together ~480 MB of
resident memory that running a compiled package never uses. The engine needs only
``libtvm_runtime`` (module loading, the Relax VM, the paged KV cache builtins).

A process that will also compile (the test suite, ``pdlink compile``) must import the full TVM
before the first engine is created; :func:`require_compiler` says so when it did not.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from contextlib import contextmanager

_RUNTIME_ONLY_ENV = "TVM_USE_RUNTIME_LIB"


class _HideModule(importlib.abc.MetaPathFinder):
    """Makes ``import <name>`` (and its submodules) fail while installed on ``sys.meta_path``."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ImportError(f"{self.name} is hidden while the TVM runtime loads")
        return None


@contextmanager
def _hidden(name: str):
    if name in sys.modules:  # already paid for; hiding it would only break the importer
        yield
        return
    finder = _HideModule(name)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@contextmanager
def _env(key: str, value: str):
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_tvm():
    """The ``tvm`` module for running packages.

    Returns the already imported TVM when there is one (a compiling process); otherwise imports
    TVM with only its runtime library and with torch hidden from ``tvm_ffi``.
    """
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    with _env(_RUNTIME_ONLY_ENV, "1"), _hidden("torch"):
        import tvm
    return tvm


def require_compiler() -> None:
    """Raise RuntimeError when this process loaded TVM's runtime only (an engine came first)."""
    tvm = sys.modules.get("tvm")
    if tvm is not None and getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise RuntimeError(
            "this process loaded TVM's runtime only (an Engine was created before compiling); "
            "import pdlink.compile before creating an Engine, or compile in another process"
        )
