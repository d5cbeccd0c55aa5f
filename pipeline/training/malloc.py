"""Keep freed tensor memory in the process heap, so a training step does not page-fault.

PyTorch takes every CPU tensor from ``malloc``. glibc serves large requests with fresh ``mmap``
pages (above a threshold that starts at 128 KiB) and gives heap memory back to the kernel once
more than a trim threshold is free at its top. A training step that allocates and frees many
tensors of a few MiB (the attention layers' per-pair activations, ``[B, N, N, hidden]``) then
touches new pages at every step: the kernel zero-fills each one on first write. Measured on the
N-body E(3) step (batch 128, 5 bodies, 1 thread): about 4,000 minor page faults and 10 ms of
system time per 45 ms step, none once both thresholds are raised (EGNN, with smaller per-edge
tensors, had none either way). See ``benchmarks/engine.py --default-malloc``.

The PyTorch CPU performance guide's remedy is another allocator (jemalloc or tcmalloc) through
``LD_PRELOAD``; raising glibc's own thresholds with ``mallopt`` gets the same effect from inside
the process, with nothing to install. It is a no-op where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit (HEAP_MAX / 2); larger tensors are still
# mapped, but they are rare and large enough that the fault cost is small next to their use.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 512 * 1024 * 1024
_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True if they were set.

    Set ``INVATTN_DEFAULT_MALLOC=1`` to keep the C library's defaults (for comparisons).
    The memory kept is what the step itself needs again at the next step, so the resident set
    stays at the step's peak rather than growing.
    """
    global _done
    if _done or os.environ.get("INVATTN_DEFAULT_MALLOC") == "1":
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # glibc only: musl and macOS have no such symbol
    except (OSError, AttributeError, TypeError):
        return False
    del gnu
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
