"""Target presets (``--target``): one table, name -> TVM target and how the library is exported."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetPreset:
    """A named compile target.

    ``lib_format`` is ``so`` (a shared library the runtime here can load) or ``tar`` (object files
    to link with the platform's toolchain: NDK, Xcode, a cross g++).  ``system_lib`` builds a static
    library registered at process start (iOS apps cannot dlopen).
    """

    name: str
    description: str
    host: dict
    device: dict | None = None
    lib_format: str = "tar"
    system_lib: bool = False
    runnable_here: bool = False
    os: str = "linux"
    arch: str = "aarch64"
    notes: str = ""
    kv_page_size: int = 16
    cpu_features: tuple[str, ...] = ()  # x86 extensions the code needs (checked when a package loads)
    extra: dict = field(default_factory=dict)

    def target_json(self) -> dict:
        """The TVM target as a JSON dict (host nested under the device target for GPUs)."""
        if self.device is None:
            return dict(self.host)
        return {**self.device, "host": dict(self.host)}

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.target_json())

    @property
    def device_kind(self) -> str:
        return "cpu" if self.device is None else self.device["kind"]


def _host_preset() -> TargetPreset:
    """This machine: llvm with its own CPU model (``mcpu``) so LLVM uses every vector extension."""
    from tvm.target import codegen

    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    host = {"kind": "llvm", "mtriple": f"{arch}-linux-gnu", "mcpu": codegen.llvm_get_system_cpu()}
    if arch == "aarch64":
        host["mattr"] = ["+neon"]
    return TargetPreset(
        name="host",
        description=f"this machine ({arch} linux, cpu {host['mcpu']})",
        host=host,
        lib_format="so",
        runnable_here=True,
        arch=arch,
        os="linux",
    )


def _x86_avx2_preset() -> TargetPreset:
    """Any x86-64 CPU with AVX2, FMA and F16C (Haswell and later, AMD Zen): most laptops and desktops.
    Built here, it also measures the AVX2 kernels on an AVX-512 machine."""
    from pdlink.common.package import host_arch, host_cpu_features

    features = ("avx", "avx2", "fma", "f16c")
    runnable = host_arch() == "x86_64" and set(features) <= set(host_cpu_features())
    return TargetPreset(
        name="x86_64-avx2",
        description="x86-64 Linux CPU with AVX2/FMA/F16C and no AVX-512 (Haswell+, Zen 1-3 laptops)",
        host={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
        lib_format="so",
        runnable_here=runnable,
        arch="x86_64",
        cpu_features=features,
        notes="runs on this machine" if runnable else "needs an x86-64 CPU with AVX2",
    )


_ARM64 = {"mattr": ["+neon"]}
_STATIC_PRESETS = (
    TargetPreset(
        "linux-arm64",
        "64-bit ARM Linux CPU (Raspberry Pi 4/5, Graviton, Jetson CPU)",
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "generic", **_ARM64},
        notes="link the .tar with aarch64-linux-gnu-g++ (Debian g++-aarch64-linux-gnu) into a .so",
    ),
    TargetPreset(
        "android-arm64",
        "Android phone CPU (arm64-v8a, NEON)",
        {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "generic", **_ARM64},
        os="android",
        notes="link the .tar with the Android NDK (TVM_NDK_CC) into a .so for the APK",
    ),
    TargetPreset(
        "android-arm64-opencl",
        "Android phone GPU through OpenCL (Adreno/Mali), arm64 host code",
        {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "generic", **_ARM64},
        device={"kind": "opencl"},
        os="android",
        notes="OpenCL kernels ship as source and are compiled by the phone's driver; link with the NDK",
    ),
    TargetPreset(
        "ios-arm64",
        "iPhone/iPad CPU (static system library linked into the app)",
        {"kind": "llvm", "mtriple": "arm64-apple-ios", "mcpu": "apple-a14", **_ARM64},
        system_lib=True,
        os="ios",
        notes="static system library: link the .tar objects into the app with Xcode (apps cannot dlopen)",
    ),
    TargetPreset(
        "macos-arm64",
        "Apple-silicon Mac CPU",
        {"kind": "llvm", "mtriple": "arm64-apple-darwin", "mcpu": "apple-m1", **_ARM64},
        os="macos",
        notes="link the .tar with Xcode's clang into a .dylib; Metal is not used (it crashes the 0.27 wheel)",
    ),
    TargetPreset(
        "cuda",
        "NVIDIA GPU server (sm_80+), x86_64 host",
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
        device={"kind": "cuda", "arch": "sm_80", "max_num_threads": 1024, "thread_warp_size": 32},
        arch="x86_64",
        notes="the PyPI wheel has no CUDA runtime: the .tar holds host objects and CUDA source; "
        "load it with a TVM built with USE_CUDA=ON",
    ),
)


def target_presets() -> dict[str, TargetPreset]:
    """All presets by name (``host`` describes the machine this runs on)."""
    presets = {"host": _host_preset(), "x86_64-avx2": _x86_avx2_preset()}
    presets.update({p.name: p for p in _STATIC_PRESETS})
    return presets


def get_target_preset(name: str) -> TargetPreset:
    """Look up a preset; raises ValueError naming the valid presets."""
    presets = target_presets()
    if name not in presets:
        raise ValueError(f"unknown target {name!r}; choose one of: {', '.join(presets)}")
    return presets[name]
