"""Loading TVM for running packages: ``tvm_ffi`` and the runtime library only, without torch.

``import tvm`` in a fresh process loads the whole compiler (``libtvm_compiler.so``, ~250 MB of
code and data) and, through ``tvm_ffi``, imports torch when it is installed: together ~480 MB of
resident memory that running a compiled package never uses. Even with the runtime library alone,
the ``tvm`` Python package imports ~200 modules (~35 MiB). The engine needs only ``libtvm_runtime``
(module loading, the Relax VM, the paged KV cache builtins), reached through ``tvm_ffi``:
:class:`Runtime` is those few calls.

A process that will also compile (the test suite, ``pdlink compile``) may import the full TVM before or
after the first engine: both load the same ``libtvm_runtime``.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import importlib.util
import os
import sys
from contextlib import contextmanager

import numpy as np


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


class Runtime:
    """The runtime calls an engine makes: load a library, run its VM, make and read tensors (CPU)."""

    CPU = 1  # DLPack's kDLCPU
    POOLED_ALLOCATOR = 2  # the VM reuses freed buffers (tvm.runtime.vm.VirtualMachine's default)

    def __init__(self):
        with _hidden("torch"):
            import tvm_ffi
        if "tvm" not in sys.modules:
            _load_runtime_library()
        self.ffi = tvm_ffi
        self.device = tvm_ffi.device("cpu", 0)
        self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")

    def get_global_func(self, name: str):
        return self.ffi.get_global_func(name)

    def virtual_machine(self, library: str):
        """The Relax VM of a compiled library (``model.so``), on the CPU with pooled memory."""
        vm = self.ffi.load_module(library)["vm_load_executable"]()
        vm["vm_initialization"](self.CPU, 0, self.POOLED_ALLOCATOR)
        return vm

    def shape(self, values) -> object:
        return self.ffi.Shape([int(v) for v in values])

    def empty(self, shape, dtype: str):
        """An uninitialised tensor in the runtime's own (aligned) memory."""
        return self._alloc(self.shape(shape), self.ffi.dtype(str(np.dtype(dtype))), self.device, None)

    def tensor(self, array: np.ndarray):
        """A runtime tensor holding a copy of ``array``."""
        array = np.ascontiguousarray(array)
        out = self.empty(array.shape, array.dtype)
        np.from_dlpack(out)[...] = array
        return out

    @staticmethod
    def numpy(tensor) -> np.ndarray:
        """A numpy copy of a runtime tensor (the VM reuses its outputs' memory on the next call)."""
        return np.array(np.from_dlpack(tensor), copy=True)


def _load_runtime_library() -> None:
    """``libtvm_runtime`` from the installed ``apache-tvm``, loaded globally as ``tvm.base`` loads it, so a
    later ``import tvm`` (a compiling process) finds the same library."""
    spec = importlib.util.find_spec("tvm")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, "lib", "libtvm_runtime.so")
        if os.path.exists(path):
            ctypes.CDLL(path, ctypes.RTLD_GLOBAL)
            return
    raise RuntimeError(f"libtvm_runtime.so not found under {folders or 'an installed tvm package'}; "
                       "install apache-tvm (make setup)")


def require_compiler() -> None:
    """Raise RuntimeError when this process imported TVM with its runtime library only."""
    tvm = sys.modules.get("tvm")
    if tvm is not None and getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise RuntimeError(
            "this process imported TVM with its runtime library only (TVM_USE_RUNTIME_LIB=1); "
            "compile in another process, or unset TVM_USE_RUNTIME_LIB"
        )
