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

from pdlink.bench.llama_flags import installed_build
from pdlink.bench.worker_failure import describe_failure

PEER_INSTALL = {
    "llama.cpp": "make bench-deps   (builds llama-cpp-python with flags derived from this CPU: "
    "python -m pdlink.bench.llama_flags --install)",
    "transformers": "pip install 'pdlink[compile]'",
}
RATIOS = {  # key -> (numerator, denominator, figure)
    "decode_ratio_q4_vs_llamacpp": ("pdlink-q4_1", "llama.cpp", "decode"),
    "prefill_ratio_q4_vs_llamacpp": ("pdlink-q4_1", "llama.cpp", "prefill512"),
    "decode_ratio_f32_vs_transformers": ("pdlink-f32", "transformers", "decode"),
    "prefill_ratio_f32_vs_transformers": ("pdlink-f32", "transformers", "prefill512"),
    "rss_ratio_q4_vs_llamacpp": ("pdlink-q4_1", "llama.cpp", "peak_rss"),
}


@dataclass(frozen=True)
class EngineBenchConfig:
    """Settings of one ``pdlink bench engine`` run."""

    output: str
    threads: int = 0
    lengths: tuple[int, ...] = (128, 512, 1024, 2048)
    decode_tokens: int = 64
    repeats: int = 3
    package_dir: str = ".cache/bench-packages"
    target: str = "host"
    arm64_mix: bool = False  # also build the linux-arm64 q4_1 package and report its kernels' instruction mix
    engines: tuple[str, ...] = ("pdlink-q4_1", "pdlink-f32", "llama.cpp", "transformers")
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.threads < 0 or self.repeats < 1 or self.decode_tokens < 2:
            raise ValueError("threads >= 0, repeats >= 1 and decode_tokens >= 2 are required")
        if 512 not in self.lengths:
            raise ValueError("--lengths must include 512 (the prefill ratio is taken there)")
        from pdlink.compile.target import get_target_preset

        if not get_target_preset(self.target).runnable_here:
            raise ValueError(f"--target {self.target} cannot run on this machine; use host (or x86_64-avx2 on x86 "
                             "CPUs with AVX2)")


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


def _ensure_package(quant: str, root: Path, target: str = "host") -> Path:
    """The default model compiled for ``target`` at ``quant`` under ``root`` (built once per compiler)."""
    from pdlink.compile.builder import CompileConfig, build_package, compiler_fingerprint

    out = root / f"smollm2-135m-{quant}-{target}-{compiler_fingerprint()}"
    if not (out / "manifest.json").is_file():
        build_package(CompileConfig(model=DEFAULT_MODEL, target=target, quant=quant, output=str(out)))
    return out


def package_kernel_path(package: Path) -> dict:
    """The package's compile target and the decode GEMV path its 4-bit matrices use."""
    import tvm

    from pdlink.common.package import load_manifest
    from pdlink.compile.gemv_words import kernel_path

    target = load_manifest(package, verify_hashes=False).target
    return {"target_preset": target.preset, "mcpu": target.target.get("mcpu"),
            "kernel_path": kernel_path(tvm.target.Target(target.target))}


def _run_worker(engine: str, cfg: EngineBenchConfig, threads: int, gguf: Path, package: Path | None) -> dict:
    cmd = [sys.executable, "-m", "pdlink.bench.engine_worker", "--engine", engine, "--threads", str(threads),
           "--gguf", str(gguf), "--decode-tokens", str(cfg.decode_tokens), "--repeats", str(cfg.repeats),
           "--lengths", *map(str, cfg.lengths)]
    if package is not None:
        cmd += ["--package", str(package)]
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        failure = describe_failure(proc.returncode, proc.stderr)
        print(f"bench: {engine}: {failure['error']}", file=sys.stderr)
        return failure
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer_available(engine: str) -> str | None:
    module = {"llama.cpp": "llama_cpp", "transformers": "transformers"}.get(engine)
    if module is None:
        return None
    import importlib.util

    return None if importlib.util.find_spec(module) else f"{engine} is not installed: {PEER_INSTALL[engine]}"


FIGURES = {
    "decode": lambda r: r["decode"]["median_tok_s"],
    "prefill512": lambda r: r["prefill"]["512"]["median_tok_s"],
    "peak_rss": lambda r: r["rss_mib"]["peak"],
}


def _ratios(results: dict, missing: dict) -> tuple[dict, dict]:
    """Every ratio of RATIOS (None where it cannot be taken) and, for each None, why not."""
    ratios, why = {}, {}
    for key, (a, b, figure) in RATIOS.items():
        ratios[key] = None
        reasons = [f"{name}: {missing[name]}" if name in missing else f"{name}: {results[name]['error']}"
                   for name in (a, b) if name in missing or "error" in results.get(name, {})]
        if reasons:
            why[key] = "; ".join(reasons)
            continue
        try:
            ratios[key] = FIGURES[figure](results[a]) / FIGURES[figure](results[b])
        except KeyError:
            why[key] = f"{a} or {b} was not in --engines"
        except ZeroDivisionError:
            why[key] = f"{b} measured zero"
    return ratios, why


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
            package = _ensure_package(engine.split("-", 1)[1], Path(cfg.package_dir), cfg.target)
            results[engine] = _run_worker("pdlink", cfg, threads, gguf, package)
            results[engine].update(package_kernel_path(package))
            results[engine]["weights_bytes"] = (package / "params.safetensors").stat().st_size
        elif (why := _peer_available(engine)) is not None:
            missing[engine] = why
            print(f"bench: skipping {engine}: {why}", file=sys.stderr)
        else:
            results[engine] = _run_worker(engine, cfg, threads, gguf, None)
            if engine == "llama.cpp" and "error" not in results[engine]:
                results[engine]["weights_bytes"] = gguf.stat().st_size
        print(f"bench: {engine} done", file=sys.stderr)
    report = _report(cfg, threads, gguf, results, missing)
    if cfg.arm64_mix:
        report["arm64_instruction_mix"] = arm64_instruction_mix(Path(cfg.package_dir))
    (out / "engine.json").write_text(json.dumps(report, indent=2))
    from pdlink.bench.plots import plot_engine_bench

    plot_engine_bench(report, out / "engine.png")
    return report


def _report(cfg, threads, gguf, results, missing) -> dict:
    decode = FIGURES["decode"]
    ratios, why_null = _ratios(results, missing)
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
        "llama_cpp_build": installed_build(),
        "memory_read_bandwidth_GB_s": bandwidth,
        "roofline": roofline,
        "results": results,
        "missing_peers": missing,
        "kernel_path": results.get("pdlink-q4_1", {}).get("kernel_path"),
        **ratios,
        "prefill_ratio_q4_vs_best_peer": _best_peer_prefill_ratio(results),
        "why_null": why_null,
    }


def arm64_instruction_mix(package_dir: Path) -> dict:
    """The linux-arm64 q4_1 package's kernel path and the instruction mix of its matmul kernels."""
    from pdlink.bench.instruction_mix import package_instruction_mix

    package = _ensure_package("q4_1", package_dir, "linux-arm64")
    return {**package_kernel_path(package), "kernels": package_instruction_mix(package)}


def _best_peer_prefill_ratio(results: dict) -> float | None:
    """pdlink q4_1's prefill(512) over the fastest peer's (llama.cpp or transformers), None without either."""
    peers = [FIGURES["prefill512"](results[n]) for n in ("llama.cpp", "transformers") if "prefill" in results.get(n, {})]
    if not peers or "prefill" not in results.get("pdlink-q4_1", {}):
        return None
    return FIGURES["prefill512"](results["pdlink-q4_1"]) / max(peers)
