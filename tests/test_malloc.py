"""The training runtime raises glibc's heap thresholds so per-step tensors stop page-faulting.

Checked through glibc's own accounting (``mallinfo2``) in a fresh process: with the raised
thresholds a 20 MB tensor comes from the heap and its memory stays there after it is freed (the
next step reuses it without faults); with the defaults the same tensor gets its own mmap'd pages.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, torch
from invattn.pipeline.training.malloc import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
flag = keep_freed_memory()
tensor = torch.ones(5_000_000)  # 20 MB, an activation of a large batch
mapped = libc.mallinfo2().hblkhd  # bytes in separately mmap'd blocks
del tensor
kept = libc.mallinfo2().arena  # bytes the heap still holds after the free
print(flag, mapped, kept)
"""
MB = 1_000_000


def run_probe(default_malloc: bool) -> tuple[str, int, int]:
    env = {**os.environ, "INVATTN_DEFAULT_MALLOC": "1" if default_malloc else "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    flag, mapped, kept = proc.stdout.split()
    return flag, int(mapped), int(kept)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_raised_thresholds_keep_tensors_in_the_heap():
    flag, mapped, kept = run_probe(default_malloc=False)
    assert flag == "True"
    assert mapped < 20 * MB <= kept, (mapped, kept)  # served by the heap, and kept there when freed
    flag, mapped, kept = run_probe(default_malloc=True)
    assert flag == "False"  # the opt-out keeps the C library's defaults
    assert mapped >= 20 * MB, mapped  # its own mmap'd pages, returned (and faulted in again) each time
