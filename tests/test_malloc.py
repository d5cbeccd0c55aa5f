"""The training runtime raises glibc's heap thresholds so per-step tensors stop page-faulting."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from invattn.pipeline.training.malloc import keep_freed_memory
print(keep_freed_memory())
def step():  # as in a training step: a dozen 1.4 MiB activations alive at once, then all freed
    saved = [torch.ones(3200, 112)]
    for _ in range(12):
        saved.append(torch.relu(saved[-1]) + 1)
    return float(saved[-1].sum())
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_probe(default_malloc: bool) -> tuple[str, int]:
    env = {**os.environ, "INVATTN_DEFAULT_MALLOC": "1" if default_malloc else "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    flag, faults = proc.stdout.split()
    return flag, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_raised_thresholds_stop_per_step_page_faults():
    flag, faults = run_probe(default_malloc=False)
    assert flag == "True"
    default_flag, default_faults = run_probe(default_malloc=True)
    assert default_flag == "False"  # the opt-out keeps the C library's defaults
    # 50 steps of 1.4 MiB tensors: with the defaults each step maps (and faults in) fresh pages
    # (thousands of faults per step measured here), with the raised thresholds it reuses the heap
    assert faults < 50 <= default_faults, (faults, default_faults)
