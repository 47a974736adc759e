"""llama.cpp's build flags for the CPU it will run on, and the install that ``make bench-deps`` runs.

llama-cpp-python builds llama.cpp from source with ``CMAKE_ARGS``. Its defaults either compile for the
build machine (``GGML_NATIVE``, which turns on AMX where the compiler knows it and crashed some Xeons) or
turn on a fixed set of x86 extensions; a hard-coded AVX-512 set dies with SIGILL on AVX2-only CPUs. Here
every instruction-set option is set explicitly from the CPU's feature flags (``/proc/cpuinfo``), AMX
always off and ``GGML_NATIVE`` off, so the build fits this machine and no other assumption leaks in.

``python -m pdlink.bench.llama_flags`` prints the flags; ``--install`` builds and installs
llama-cpp-python with them (into this environment or ``--target DIR``) unless an install with the same
flags is there, and writes ``llama_cpp_build.json`` beside the ``llama_cpp`` package so the benchmark
can report how its peer was built. ``--isa avx2`` caps the x86 extensions (an AVX2-only peer on an
AVX-512 machine, to measure the AVX2 path).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RECORD = "llama_cpp_build.json"
PIP_SPEC = "llama-cpp-python>=0.3"
# ggml option -> the cpuinfo flags it needs (GGML_AVX512 compiles with -mavx512{f,cd,vl,dq,bw})
X86_OPTIONS = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512f", "avx512vbmi")),
    ("GGML_AVX512_VNNI", ("avx512f", "avx512_vnni")),
    ("GGML_AVX512_BF16", ("avx512f", "avx512_bf16")),
)
ALWAYS_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
# --isa caps: the x86 options allowed at each level
ISA_LEVELS = {
    "avx2": ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"),
    "native": tuple(name for name, _ in X86_OPTIONS),
}
# aarch64 cpuinfo "Features" -> -march extension (asimd is the baseline: NEON is in every armv8-a)
ARM_EXTENSIONS = (("asimddp", "dotprod"), ("asimdhp", "fp16"), ("i8mm", "i8mm"), ("sve", "sve"))


def cpu_flags(cpuinfo_text: str) -> tuple[str, set[str]]:
    """(architecture, feature flags) from the text of ``/proc/cpuinfo`` (x86 ``flags``, arm ``Features``)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            arch = "x86_64" if key.strip() == "flags" else "aarch64"
            return arch, set(value.split())
    raise ValueError("no 'flags' (x86) or 'Features' (arm) line in the cpuinfo text; pass --cpuinfo FILE")


def llama_cmake_args(arch: str, flags: set[str], isa: str = "native") -> list[str]:
    """CMake ``-D`` options for llama.cpp on a CPU of ``arch`` with these ``flags``: each x86 option on
    exactly when the CPU has its features (and ``isa`` allows it), AMX always off, never native."""
    if isa not in ISA_LEVELS:
        raise ValueError(f"unknown --isa {isa!r}; choose one of {', '.join(ISA_LEVELS)}")
    args = ["-DGGML_NATIVE=OFF"]
    if arch == "x86_64":
        allowed = ISA_LEVELS[isa]
        for name, needs in X86_OPTIONS:
            on = name in allowed and all(f in flags for f in needs)
            args.append(f"-D{name}={'ON' if on else 'OFF'}")
        args += [f"-D{name}=OFF" for name in ALWAYS_OFF]
    elif arch == "aarch64":
        extensions = [ext for flag, ext in ARM_EXTENSIONS if flag in flags]
        base = "armv8.2-a" if extensions else "armv8-a"
        args.append(f"-DGGML_CPU_ARM_ARCH={'+'.join([base, *extensions])}")
    else:
        raise ValueError(f"no llama.cpp flag table for {arch!r} (x86_64 and aarch64 are known)")
    return args


def this_machine_args(isa: str = "native", cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The flags for the CPU this runs on."""
    arch, flags = cpu_flags(Path(cpuinfo).read_text())
    machine = platform.machine().lower()
    if cpuinfo == "/proc/cpuinfo" and {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) != arch:
        raise ValueError(f"cpuinfo says {arch} but this is a {machine} machine")
    return llama_cmake_args(arch, flags, isa)


def installed_build(search_path: list[str] | None = None) -> dict | None:
    """The record of how the importable ``llama_cpp`` was built (None: not installed or not recorded)."""
    location = _package_dir(search_path)
    if location is None:
        return None
    record = location.parent / RECORD
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return {"cmake_args": None, "note": f"llama_cpp at {location} was not installed by make bench-deps"}


def _package_dir(search_path: list[str] | None) -> Path | None:
    if search_path is not None:
        for folder in search_path:
            if (Path(folder) / "llama_cpp" / "__init__.py").is_file():
                return Path(folder) / "llama_cpp"
        return None
    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def install(cmake_args: list[str], target: str | None = None) -> dict:
    """Build and install llama-cpp-python with ``cmake_args`` unless the same build is installed.

    ``--no-cache-dir``: pip would otherwise reuse a wheel it built earlier with other flags."""
    search = [str(Path(target).resolve())] if target else None
    current = installed_build(search)
    if current is not None and current.get("cmake_args") == cmake_args:
        print(f"llama-cpp-python already built with these flags: {' '.join(cmake_args)}", file=sys.stderr)
        return current
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", PIP_SPEC]
    if current is not None:
        cmd += ["--force-reinstall", "--no-deps"]
    if target:
        cmd += ["--no-deps", "--upgrade", "--target", str(Path(target).resolve())]
    print(f"building llama-cpp-python with CMAKE_ARGS={' '.join(cmake_args)}", file=sys.stderr)
    subprocess.run(cmd, check=True, env={**os.environ, "CMAKE_ARGS": " ".join(cmake_args)})
    importlib.invalidate_caches()
    location = _package_dir(search)
    if location is None:
        raise RuntimeError("pip succeeded but llama_cpp cannot be found; is the environment's site-packages on the path?")
    record = {"cmake_args": cmake_args, "machine": platform.machine(), "installed_at": str(location)}
    (location.parent / RECORD).write_text(json.dumps(record, indent=2))
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pdlink.bench.llama_flags", description=__doc__.split("\n\n")[0])
    p.add_argument("--isa", default="native", choices=list(ISA_LEVELS),
                   help="x86: every extension this CPU has (native) or at most AVX2 (avx2)")
    p.add_argument("--cpuinfo", default="/proc/cpuinfo", help="derive from this cpuinfo text instead")
    p.add_argument("--cmake-args", default="", help="use these flags instead of derived ones (space-separated)")
    p.add_argument("--install", action="store_true", help="build and install llama-cpp-python with the flags")
    p.add_argument("--target", help="with --install: install into this folder (put it on PYTHONPATH to use it)")
    args = p.parse_args(argv)
    cmake_args = args.cmake_args.split() if args.cmake_args.strip() else this_machine_args(args.isa, args.cpuinfo)
    if not args.install:
        print(" ".join(cmake_args))
        return 0
    install(cmake_args, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
