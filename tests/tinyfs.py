"""Run a Python script with a tiny real tmpfs mounted, to meet a real full disk (ENOSPC).

The mount lives in a private mount namespace (``unshare --map-root-user --mount``), so it
needs no root and disappears with the script; the script reports what it saw as JSON on its
last stdout line.  Without user namespaces the test is skipped with the reason, or fails under
CI (CI=true), where it must run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _unavailable(reason: str):
    msg = f"cannot mount a tiny tmpfs: {reason}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{msg} (CI is set, so this is an error, not a skip)")
    pytest.skip(msg)


def run_on_tiny_fs(script: str, mount_dir: Path, options: str, timeout: float = 300) -> tuple[dict, str]:
    """Mount ``tmpfs -o options`` on ``mount_dir``, run ``script`` there; return (JSON, stderr)."""
    if shutil.which("unshare") is None:
        _unavailable("unshare is not installed")
    mount_dir.mkdir(parents=True, exist_ok=True)
    path = mount_dir.parent / f"{mount_dir.name}_script.py"
    path.write_text(script)
    cmd = ["unshare", "--map-root-user", "--mount", "sh", "-c",
           f'mount -t tmpfs -o {options} tmpfs "$1" || exit 97; exec "$2" "$3"',
           "sh", str(mount_dir), sys.executable, str(path)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if proc.returncode == 97 or "unshare failed" in proc.stderr:
        _unavailable(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "mount failed")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"script failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1]), proc.stderr
