"""Run a cross-compiled ``linux-arm64`` package on this x86_64 machine, under user-mode emulation.

The package's ``model.tar`` (aarch64 object files) is linked into ``model.so`` with
``aarch64-linux-gnu-g++``; the C++ runner ``native/pdlink_run.cc`` is built for aarch64 against the
``libtvm_runtime.so``/``libtvm_ffi.so`` of the aarch64 ``apache-tvm``/``apache-tvm-ffi`` wheels from
PyPI (same versions as this venv's); then ``qemu-aarch64-static -L /usr/aarch64-linux-gnu`` runs it
with the cross toolchain's glibc. No Debian arm64 root file system (debootstrap) is needed.

The same runner built natively with ``g++`` runs a ``host`` package (``run_host``): that checks the
runner itself against the Python engine.

Tools: Debian packages ``qemu-user-static``, ``g++-aarch64-linux-gnu`` and ``libc6-dev-arm64-cross``
(``install_cross_tools.sh``).
Everything built or downloaded is cached under ``.cache/arm64-tvm/`` (``PDLINK_ARM64_CACHE``).

Command line: ``python -m pdlink.android_bridge.qemu_runner --package DIR --prompt-ids 1,2,3 [--host]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNER_SOURCE = HERE / "native" / "pdlink_run.cc"
INSTALL_SCRIPT = HERE / "install_cross_tools.sh"
CROSS_SYSROOT = Path("/usr/aarch64-linux-gnu")
# The aarch64 wheels are tagged manylinux_2_28 (pip's manylinux2014 platform does not match them).
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# Tool -> Debian package that provides it.
CROSS_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}
# All that install_cross_tools.sh installs (the aarch64 glibc is only a Recommends of the compiler).
DEBIAN_PACKAGES = ("qemu-user-static", "g++-aarch64-linux-gnu", "libc6-dev-arm64-cross")


class EmulationError(RuntimeError):
    """Something needed to run a package under emulation is missing or failed."""


class CrossToolsMissing(EmulationError):
    """The cross compiler or qemu is not installed."""


@dataclass(frozen=True)
class RunResult:
    """What ``pdlink_run`` printed, plus the wall time of the whole process."""

    tokens: list[int]
    top2_gaps: list[float]
    prompt_tokens: int
    load_s: float
    prefill_s: float
    decode_s: float
    wall_s: float


def default_cache_dir() -> Path:
    return Path(os.environ.get("PDLINK_ARM64_CACHE", HERE.parent / ".cache" / "arm64-tvm"))


# ---------------------------------------------------------------------------------- tools


def cross_tools_status() -> dict[str, str | None]:
    """Each needed tool and its path (None when missing); the sysroot under ``sysroot``."""
    status: dict[str, str | None] = {tool: shutil.which(tool) for tool in CROSS_TOOLS}
    has_glibc = (CROSS_SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists() and (CROSS_SYSROOT / "include").is_dir()
    status["sysroot"] = str(CROSS_SYSROOT) if has_glibc else None
    return status


def require_cross_tools() -> dict[str, str]:
    """The tools' paths; raises CrossToolsMissing naming the Debian packages to install."""
    status = cross_tools_status()
    missing = sorted({CROSS_TOOLS.get(t, "libc6-dev-arm64-cross") for t, p in status.items() if p is None})
    if missing:
        raise CrossToolsMissing(
            f"running linux-arm64 packages under emulation needs the Debian packages {' and '.join(missing)} "
            f"(missing: {', '.join(t for t, p in status.items() if p is None)}); install them with "
            f"`sudo {INSTALL_SCRIPT}` or `apt-get install -y {' '.join(DEBIAN_PACKAGES)}`"
        )
    return {k: v for k, v in status.items() if v is not None}


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise EmulationError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-4000:]}\n"
                             f"command: {' '.join(map(str, cmd))}")
    return proc


def _atomic_dir(final: Path, fill) -> Path:
    """Create ``final`` by filling a temporary sibling and renaming it (safe against half-built caches)."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------- TVM libraries


def _versions() -> tuple[str, str]:
    return importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmulationError(f"Python package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def ffi_include_dir() -> Path:
    """The tvm_ffi headers (tvm/ffi, dlpack); they do not depend on the CPU architecture."""
    return _package_dir("tvm_ffi") / "include"


def host_tvm_lib_dirs() -> list[Path]:
    """Folders of this venv's x86_64 libtvm_runtime.so and libtvm_ffi.so."""
    return [_package_dir("tvm") / "lib", _package_dir("tvm_ffi") / "lib"]


def fetch_arm64_tvm(cache_dir: Path | None = None) -> Path:
    """Download the aarch64 wheels of this venv's apache-tvm/apache-tvm-ffi versions and unpack
    ``libtvm_runtime.so`` and ``libtvm_ffi.so`` into one folder, which is returned (cached)."""
    tvm_version, ffi_version = _versions()
    root = (cache_dir or default_cache_dir()) / f"tvm-{tvm_version}-ffi-{ffi_version}"

    def fill(tmp: Path) -> None:
        wheels = tmp / "wheels"  # ~100 MB (the compiler); only the two runtime libraries are kept
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
              "--platform", WHEEL_PLATFORM, "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
              "-d", wheels, f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}"],
             "downloading the aarch64 TVM wheels from PyPI", timeout=900)
        (tmp / "lib").mkdir()
        wanted = {"apache_tvm-": "tvm/lib/libtvm_runtime.so", "apache_tvm_ffi-": "tvm_ffi/lib/libtvm_ffi.so"}
        for prefix, member in wanted.items():
            version = tvm_version if prefix == "apache_tvm-" else ffi_version
            found = sorted(wheels.glob(f"{prefix}{version}-*aarch64*.whl"))
            if not found:
                raise EmulationError(f"no aarch64 wheel {prefix}{version} in {wheels}")
            with zipfile.ZipFile(found[-1]) as whl, whl.open(member) as src:
                (tmp / "lib" / Path(member).name).write_bytes(src.read())
        shutil.rmtree(wheels)

    return _atomic_dir(root, fill) / "lib"


# ---------------------------------------------------------------------------------- building


def _file_digest(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for p in paths:
        digest.update(p.read_bytes())
    return digest.hexdigest()[:16]


def link_package(package: str | Path, cache_dir: Path | None = None) -> Path:
    """Link a linux-arm64 package's ``model.tar`` into an aarch64 ``model.so`` (cached by content)."""
    package = Path(package)
    manifest = json.loads((package / "manifest.json").read_text())
    target = manifest["target"]
    if target.get("arch") != "aarch64" or target.get("os") != "linux" or target.get("lib_format") != "tar":
        raise EmulationError(f"{package} is a {target.get('preset')} package; only linux-arm64 (.tar) packages "
                             "can be linked and run under qemu here")
    require_cross_tools()
    tar_path = package / manifest["library"]
    out = (cache_dir or default_cache_dir()) / "models" / _file_digest(tar_path)

    def fill(tmp: Path) -> None:
        objs = tmp / "obj"
        with tarfile.open(tar_path) as tar:
            tar.extractall(objs, filter="data")
        # The objects need only libm (expf, powf, ...) and libtvm_ffi's C API, resolved at load time
        # from the process that loads the library (as tvm.support.cc.create_shared does on the host).
        _run(["aarch64-linux-gnu-g++", "-shared", "-fPIC", "-o", tmp / "model.so", *sorted(objs.glob("*.o")), "-lm"],
             "linking model.tar with aarch64-linux-gnu-g++")
        shutil.rmtree(objs)

    return _atomic_dir(out, fill) / "model.so"


def build_runner(arch: str = "aarch64", cache_dir: Path | None = None) -> Path:
    """Compile ``pdlink_run.cc`` for ``aarch64`` (cross, against the aarch64 wheels' libraries, which
    sit in ``lib/`` beside it: rpath ``$ORIGIN/lib``) or ``host`` (g++, against this venv's)."""
    cache_dir = cache_dir or default_cache_dir()
    key = _file_digest(RUNNER_SOURCE, extra=arch + "|".join(_versions()))
    if arch == "aarch64":
        require_cross_tools()
        lib_dirs, cxx = [fetch_arm64_tvm(cache_dir)], "aarch64-linux-gnu-g++"
    elif arch == "host":
        lib_dirs, cxx = host_tvm_lib_dirs(), "g++"
        if shutil.which(cxx) is None:
            raise EmulationError("building the host runner needs g++ (Debian package g++)")
    else:
        raise ValueError(f"arch must be 'aarch64' or 'host', got {arch!r}")
    out = cache_dir / "runners" / f"{arch}-{key}"

    def fill(tmp: Path) -> None:
        if arch == "aarch64":
            shutil.copytree(lib_dirs[0], tmp / "lib")
            link_dirs, rpath = [tmp / "lib"], "$ORIGIN/lib"
        else:
            link_dirs, rpath = lib_dirs, ":".join(map(str, lib_dirs))
        _run([cxx, "-std=c++17", "-O2", "-o", tmp / "pdlink_run", RUNNER_SOURCE, f"-I{ffi_include_dir()}",
              *(f"-L{d}" for d in link_dirs), "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
              f"-Wl,-rpath,{rpath}"], f"compiling pdlink_run.cc with {cxx}")

    return _atomic_dir(out, fill) / "pdlink_run"


# ---------------------------------------------------------------------------------- running


def _invoke(cmd: list[str], num_threads: int, timeout_s: float) -> RunResult:
    env = {**os.environ, "TVM_NUM_THREADS": str(num_threads)}
    start = time.perf_counter()
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise EmulationError(f"pdlink_run did not finish in {timeout_s:.0f} s: {' '.join(map(str, cmd))}") from exc
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise EmulationError(f"pdlink_run failed (exit {proc.returncode}):\n{proc.stderr.strip()[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise EmulationError(f"pdlink_run printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    out = json.loads(lines[-1])
    return RunResult(out["tokens"], out["top2_gaps"], out["prompt_tokens"], out["load_s"], out["prefill_s"],
                     out["decode_s"], wall)


def _runner_args(package: Path, lib: Path, prompt_ids, max_tokens: int, context: int) -> list:
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ValueError("need at least one prompt token")
    context = context or max(256, -(-(len(ids) + max_tokens) // 256) * 256)
    return ["--package", package, "--lib", lib, "--prompt-ids", ",".join(map(str, ids)),
            "--max-tokens", max_tokens, "--context", context]


def _threads(num_threads: int) -> int:
    return num_threads or len(os.sched_getaffinity(0))


def run_arm64(package: str | Path, prompt_ids, max_tokens: int = 8, *, num_threads: int = 0,
              timeout_s: float = 900, context: int = 0, cache_dir: Path | None = None) -> RunResult:
    """Greedy-decode ``max_tokens`` tokens with a linux-arm64 package under qemu-aarch64-static."""
    tools = require_cross_tools()
    lib = link_package(package, cache_dir)
    runner = build_runner("aarch64", cache_dir)
    cmd = [tools["qemu-aarch64-static"], "-L", CROSS_SYSROOT, runner,
           *_runner_args(Path(package), lib, prompt_ids, max_tokens, context)]
    return _invoke(cmd, _threads(num_threads), timeout_s)


def run_host(package: str | Path, prompt_ids, max_tokens: int = 8, *, num_threads: int = 0,
             timeout_s: float = 300, context: int = 0, cache_dir: Path | None = None) -> RunResult:
    """The same runner built natively, on a host package (its ``model.so``)."""
    package = Path(package)
    manifest = json.loads((package / "manifest.json").read_text())
    if manifest["target"].get("lib_format") != "so":
        raise EmulationError(f"{package} is not a host package (library {manifest['library']})")
    runner = build_runner("host", cache_dir)
    cmd = [runner, *_runner_args(package, package / manifest["library"], prompt_ids, max_tokens, context)]
    return _invoke(cmd, _threads(num_threads), timeout_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--host", action="store_true", help="run a host package with the natively built runner")
    args = ap.parse_args(argv)
    ids = [int(x) for x in args.prompt_ids.split(",")]
    try:
        run = run_host if args.host else run_arm64
        result = run(args.package, ids, args.max_tokens, num_threads=args.threads)
    except EmulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
