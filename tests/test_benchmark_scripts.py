"""The speed benchmarks run: ``--help`` prints usage and runs nothing, ``--quick`` finishes.

Only that they work and print their tables is tested here; their figures are quoted in the
closing notes, never asserted (timings on a shared CPU are noise).
"""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["engine.py", "scaling.py", "qm9_speed.py", "gpu_check.py"]


def run(script, *args, timeout=600, cwd=None):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or REPO)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(script, tmp_path):
    proc = run(script, "--help", timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "--quick" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_engine_quick_prints_ratios_to_egnn():
    proc = run("engine.py", "--quick")
    assert proc.returncode == 0, proc.stderr
    params = next(line.split()[1:] for line in proc.stdout.splitlines() if line.split()[:1] == ["params"])
    assert len(params) == 3 and params[2] == "133,764"  # E3, SE3, EGNN
    assert "ratios to EGNN" in proc.stdout and "E3 " in proc.stdout.split("ratios to EGNN")[1]


def test_scaling_quick_runs_dense_and_sparse():
    proc = run("scaling.py", "--quick")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert {(r[0], r[1]) for r in rows} >= {("5", "dense"), ("5", "sparse"), ("40", "sparse")}
    sparse_40 = next(r for r in rows if r[:2] == ["40", "sparse"])
    assert int(sparse_40[2]) < 40 * 40  # the radius graph has fewer edges than all pairs
    assert "sparse time ~ N^" in proc.stdout


def test_qm9_speed_quick_compares_with_schnet():
    proc = run("qm9_speed.py", "--quick")
    assert proc.returncode == 0, proc.stderr
    assert "SchNet (PyG)" in proc.stdout and "SE3 dense" in proc.stdout and "SE3 sparse 5 A" in proc.stdout


def test_gpu_check_dry_run_on_cpu():
    """The GPU script's code path (TF32 switches, bf16 autocast, dense and sparse) on the CPU."""
    proc = run("gpu_check.py", "--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OVER" not in proc.stdout and "ERROR" not in proc.stdout
    assert proc.stdout.count(" bf16 ") >= 5 and "all steps finite" in proc.stdout
