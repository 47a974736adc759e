"""Handing freed heap memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only: musl (Alpine) and bionic (Android) have none
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS (glibc's ``malloc_trim``); False where there is none.

    Loading leaves freed memory inside the process (parsing a tokenizer file frees more than it keeps);
    the allocator keeps it resident until trimmed, and it counts against the process's memory.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
