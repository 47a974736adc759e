"""Why a benchmark worker process died, in words: its signal and the likely cause.

A peer built for CPU features this machine lacks dies with SIGILL on its first vector instruction;
the benchmark names that (and the fix) instead of reporting a bare exit status and null ratios.
"""

from __future__ import annotations

import signal

LIKELY_CAUSES = {
    "SIGILL": "illegal instruction: the peer was built for CPU features this machine lacks "
              "(e.g. AVX-512 on an AVX2-only CPU); rebuild it for this CPU with `make bench-deps`",
    "SIGSEGV": "segmentation fault inside the engine (a native library bug, or a build for another CPU "
               "or library version); rebuild it with `make bench-deps`",
    "SIGBUS": "bus error: a memory-mapped model file changed or the disk filled while it was in use",
    "SIGKILL": "killed from outside, most often by the kernel's out-of-memory killer (see `dmesg`); "
               "free memory or pass fewer --lengths",
    "SIGABRT": "aborted by the engine itself (an assertion or an uncaught C++ exception); see its stderr",
    "SIGFPE": "arithmetic exception in native code",
}


def describe_failure(returncode: int, stderr: str) -> dict:
    """A result entry for a worker that exited with ``returncode`` (negative: killed by that signal)."""
    tail = stderr.strip()[-2000:]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        cause = LIKELY_CAUSES.get(name, "killed by a signal; see stderr")
        return {"error": f"worker died of {name}: {cause}", "signal": name, "likely_cause": cause,
                "exit_code": returncode, "stderr_tail": tail}
    last = tail.splitlines()[-1] if tail else "no output on stderr"
    return {"error": f"worker failed (exit {returncode}): {last}", "signal": None, "likely_cause": last,
            "exit_code": returncode, "stderr_tail": tail}
