"""``pdlink bench engine``: pdlink's compiled packages against llama.cpp and transformers, one run.

Every engine runs in its own subprocess, one after the other, with the same thread count, on the
same GGUF weights; results go to ``engine.json`` and ``engine.png`` in the output directory.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pdlink.common.models import DEFAULT_MODEL

PEER_INSTALL = {
    "llama.cpp": 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF ..." '
    "pip install llama-cpp-python   (or: make bench-deps)",
    "transformers": "pip install 'pdlink[compile]'",
}
LLAMA_CPP_BUILD_FLAGS = os.environ.get(
    "PDLINK_LLAMA_CMAKE_ARGS",
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
    "-DGGML_AVX512_VNNI=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF (Makefile bench-deps)",
)


@dataclass(frozen=True)
class EngineBenchConfig:
    """Settings of one ``pdlink bench engine`` run."""

    output: str
    threads: int = 0
    lengths: tuple[int, ...] = (128, 512, 1024, 2048)
    decode_tokens: int = 64
    repeats: int = 3
    package_dir: str = ".cache/bench-packages"
    engines: tuple[str, ...] = ("pdlink-q4_1", "pdlink-f32", "llama.cpp", "transformers")
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.threads < 0 or self.repeats < 1 or self.decode_tokens < 2:
            raise ValueError("threads >= 0, repeats >= 1 and decode_tokens >= 2 are required")
        if 512 not in self.lengths:
            raise ValueError("--lengths must include 512 (the prefill ratio is taken there)")


def machine_info(threads: int) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "threads": threads}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                info["vector_flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "f16c", "amx")))
                break
    except OSError:
        pass
    info["cores_available"] = len(os.sched_getaffinity(0))
    return info


def measure_read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: ``threads`` threads summing disjoint slices of a large array."""
    data = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    slices = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(np.sum, slices))
            best = min(best, time.perf_counter() - t)
    return data.nbytes / best / 1e9


def _ensure_package(quant: str, root: Path) -> Path:
    from pdlink.compile.builder import CompileConfig, build_package, compiler_fingerprint

    out = root / f"smollm2-135m-{quant}-host-{compiler_fingerprint()}"
    if not (out / "manifest.json").is_file():
        build_package(CompileConfig(model=DEFAULT_MODEL, target="host", quant=quant, output=str(out)))
    return out


def _run_worker(engine: str, cfg: EngineBenchConfig, threads: int, gguf: Path, package: Path | None) -> dict:
    cmd = [sys.executable, "-m", "pdlink.bench.engine_worker", "--engine", engine, "--threads", str(threads),
           "--gguf", str(gguf), "--decode-tokens", str(cfg.decode_tokens), "--repeats", str(cfg.repeats),
           "--lengths", *map(str, cfg.lengths)]
    if package is not None:
        cmd += ["--package", str(package)]
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": f"worker failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer_available(engine: str) -> str | None:
    module = {"llama.cpp": "llama_cpp", "transformers": "transformers"}.get(engine)
    if module is None:
        return None
    import importlib.util

    return None if importlib.util.find_spec(module) else f"{engine} is not installed: {PEER_INSTALL[engine]}"


def _ratio(results: dict, a: str, b: str, key) -> float | None:
    try:
        return key(results[a]) / key(results[b])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def run_engine_bench(cfg: EngineBenchConfig) -> dict:
    """Run every engine, write ``engine.json`` + ``engine.png``; return the JSON dict."""
    from pdlink.compile.checkpoint import resolve_default_gguf
    from pdlink.edge.engine import default_num_threads

    threads = cfg.threads or default_num_threads()
    gguf = resolve_default_gguf()
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    results, missing = {}, {}
    for engine in cfg.engines:
        if engine.startswith("pdlink-"):
            package = _ensure_package(engine.split("-", 1)[1], Path(cfg.package_dir))
            results[engine] = _run_worker("pdlink", cfg, threads, gguf, package)
            results[engine]["weights_bytes"] = (package / "params.safetensors").stat().st_size
        elif (why := _peer_available(engine)) is not None:
            missing[engine] = why
            print(f"bench: skipping {engine}: {why}", file=sys.stderr)
        else:
            results[engine] = _run_worker(engine, cfg, threads, gguf, None)
        print(f"bench: {engine} done", file=sys.stderr)
    report = _report(cfg, threads, gguf, results, missing)
    (out / "engine.json").write_text(json.dumps(report, indent=2))
    from pdlink.bench.plots import plot_engine_bench

    plot_engine_bench(report, out / "engine.png")
    return report


def _report(cfg, threads, gguf, results, missing) -> dict:
    decode = lambda r: r["decode"]["median_tok_s"]  # noqa: E731
    prefill512 = lambda r: r["prefill"]["512"]["median_tok_s"]  # noqa: E731
    bandwidth = measure_read_bandwidth(threads)
    roofline = {}
    for name, r in results.items():
        if "weights_bytes" in r and "decode" in r:
            gbs = r["weights_bytes"] * decode(r) / 1e9
            roofline[name] = {"decode_GB_s": gbs, "fraction_of_read_bandwidth": gbs / bandwidth}
    return {
        "machine": machine_info(threads),
        "config": asdict(cfg),
        "model": {"gguf": str(gguf), "name": "SmolLM2-135M-Instruct Q4_1"},
        "llama_cpp_build_flags": LLAMA_CPP_BUILD_FLAGS,
        "memory_read_bandwidth_GB_s": bandwidth,
        "roofline": roofline,
        "results": results,
        "missing_peers": missing,
        "decode_ratio_q4_vs_llamacpp": _ratio(results, "pdlink-q4_1", "llama.cpp", decode),
        "prefill_ratio_q4_vs_llamacpp": _ratio(results, "pdlink-q4_1", "llama.cpp", prefill512),
        "decode_ratio_f32_vs_transformers": _ratio(results, "pdlink-f32", "transformers", decode),
        "prefill_ratio_f32_vs_transformers": _ratio(results, "pdlink-f32", "transformers", prefill512),
        "rss_ratio_q4_vs_llamacpp": _ratio(results, "pdlink-q4_1", "llama.cpp", lambda r: r["rss_mib"]["peak"]),
    }
