"""The instruction mix of a cross-compiled package's kernels, read from its objects with a disassembler.

An arm64 package cannot run here except under emulation, which says nothing about speed; its
disassembly does say whether a kernel is vectorised. Each function of the package's ``model.tar`` is
counted by instruction class: NEON multiply-accumulates (``fmla``/``fmls`` on ``v`` registers), dot
products (``sdot``/``udot``/``usdot``), vector int -> float converts, other vector floating point, and
scalar floating point (``s``/``d`` registers: what a scalar fallback loop is made of).
"""

from __future__ import annotations

import bisect
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

DISASSEMBLERS = (["aarch64-linux-gnu-objdump", "-dr", "--no-show-raw-insn"],
                 ["llvm-objdump", "-dr", "--no-show-raw-insn", "--triple=aarch64"])
_FUNCTION = re.compile(r"^(?P<addr>[0-9a-f]+) <(?P<name>[^>]+)>:$")
_INSTRUCTION = re.compile(r"^\s*(?P<addr>[0-9a-f]+):\s+(?P<mnemonic>[a-z][a-z0-9.]*)\s*(?P<operands>.*)$")
_RELOCATION = re.compile(r"^\s*(?P<addr>[0-9a-f]+):\s+R_AARCH64_\w+\s+\.text(\+0x(?P<offset>[0-9a-f]+))?\s*$")
_BRANCH = re.compile(r"^(?P<target>[0-9a-f]+) <")
_TAIL_CALL = re.compile(r"^(?P<target>[0-9a-f]+) <[^+>]+>$")  # ``b`` to another function's first instruction
_VECTOR_REG = re.compile(r"\bv\d+\.\d*[bhsd]\b")
_SCALAR_FP_REG = re.compile(r"\b[sdh]\d+\b")
FP_ARITHMETIC = ("fmla", "fmls", "fmadd", "fmsub", "fnmadd", "fnmsub", "fmul", "fadd", "fsub", "fdiv", "fmax", "fmin")


KERNEL_PREFIX = "__tvm_ffi_"  # a compiled PrimFunc's exported entry point
COMPUTE_SUFFIX = "_compute_"  # the body TVM splits out of an entry point


class DisassemblerMissing(RuntimeError):
    """No aarch64 disassembler on PATH (install binutils-aarch64-linux-gnu or llvm)."""


def _disassembler() -> list[str]:
    for cmd in DISASSEMBLERS:
        if shutil.which(cmd[0]):
            return cmd
    raise DisassemblerMissing("no aarch64 disassembler: install binutils-aarch64-linux-gnu "
                              "(android_bridge/install_cross_tools.sh) or llvm")


def classify(mnemonic: str, operands: str) -> str | None:
    """The class of one instruction (None: not floating point / vector work we count)."""
    vector = bool(_VECTOR_REG.search(operands))
    if mnemonic in ("sdot", "udot", "usdot", "sudot"):
        return "dot_product"
    if mnemonic in ("fmla", "fmls") and vector:
        return "vector_fma"
    if mnemonic in ("ucvtf", "scvtf") and vector:
        return "vector_convert"
    if mnemonic.startswith("f") and vector:
        return "vector_fp"
    if mnemonic in FP_ARITHMETIC and _SCALAR_FP_REG.search(operands):
        return "scalar_fp"
    return None


def parse_disassembly(text: str) -> dict[str, Counter]:
    """Mnemonic and class counts per named function of ``objdump -dr`` output (classes under ``class:NAME``).

    TVM's parallel bodies and per-kernel compute functions are private (no symbol): objdump lists their
    code under whichever symbol precedes it. Code is therefore split at every entry point (a symbol, a
    ``.text`` relocation such as the function pointer passed to the thread pool, a direct or tail call), and
    each named function is credited with the unnamed code it reaches."""
    symbols, code, refs = {}, [], []  # refs: (from address, to address)
    for line in text.splitlines():
        if (m := _FUNCTION.match(line.strip())) is not None:
            symbols[int(m["addr"], 16)] = m["name"]
        elif (m := _RELOCATION.match(line)) is not None:
            refs.append((int(m["addr"], 16), int(m["offset"] or "0", 16)))
        elif (m := _INSTRUCTION.match(line)) is not None:
            addr = int(m["addr"], 16)
            code.append((addr, m["mnemonic"], m["operands"]))
            call = _BRANCH if m["mnemonic"] == "bl" else _TAIL_CALL if m["mnemonic"] == "b" else None
            if call is not None and (b := call.match(m["operands"].strip())) is not None:
                refs.append((addr, int(b["target"], 16)))
    entries = sorted(set(symbols) | {to for _, to in refs})
    region = lambda addr: entries[bisect.bisect_right(entries, addr) - 1] if addr >= entries[0] else None  # noqa: E731
    counts: dict[int, Counter] = defaultdict(Counter)
    for addr, mnemonic, operands in code:
        if (start := region(addr)) is not None:
            counts[start][mnemonic] += 1
            if (kind := classify(mnemonic, operands)) is not None:
                counts[start][f"class:{kind}"] += 1
    edges: dict[int, set[int]] = defaultdict(set)
    for frm, to in refs:
        if (start := region(frm)) is not None:
            edges[start].add(to)
    return {name: _reachable_counts(start, symbols, edges, counts) for start, name in symbols.items()}


def _reachable_counts(start: int, symbols: dict, edges: dict, counts: dict) -> Counter:
    total, seen, todo = Counter(), {start}, [start]
    while todo:
        node = todo.pop()
        total.update(counts.get(node, Counter()))
        for nxt in edges.get(node, ()):
            # named functions are counted on their own, except a kernel's compute function (``<kernel>_compute_``,
            # which TVM emits as a named, not-inlined function when every kernel declares its buffers distinct)
            if nxt not in seen and (nxt not in symbols or symbols[nxt].endswith(COMPUTE_SUFFIX)):
                seen.add(nxt)
                todo.append(nxt)
    return total


def summarize(counts: Counter) -> dict:
    """One function's mix: instruction total, per-class counts and its ten commonest mnemonics."""
    mnemonics = Counter({k: v for k, v in counts.items() if not k.startswith("class:")})
    classes = ("vector_fma", "dot_product", "vector_convert", "vector_fp", "scalar_fp")
    return {"instructions": sum(mnemonics.values()), **{c: counts.get(f"class:{c}", 0) for c in classes},
            "top": dict(mnemonics.most_common(10))}


def package_instruction_mix(package: Path, name_pattern: str = r"linear|lm_head") -> dict[str, dict]:
    """The mix of every function of ``package``'s ``model.tar`` whose name matches ``name_pattern``."""
    library = Path(package) / "model.tar"
    if not library.is_file():
        raise FileNotFoundError(f"{library} is missing: the mix is read from a cross build's object archive")
    cmd = _disassembler()
    wanted = re.compile(name_pattern)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(library) as tar:
            tar.extractall(tmp, filter="data")
        for obj in sorted(Path(tmp).rglob("*.o")):
            text = subprocess.run([*cmd, str(obj)], capture_output=True, text=True, check=True).stdout
            for name, counts in parse_disassembly(text).items():
                if name.startswith(KERNEL_PREFIX) and wanted.search(name):
                    out[name[len(KERNEL_PREFIX):]] = summarize(counts)
    return out
