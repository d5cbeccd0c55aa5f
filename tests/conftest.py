"""Shared fixtures: small real datasets made by our own simulator."""
from __future__ import annotations

import pytest

from invattn.cli import main as cli


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor model tests: faster, and immune to
    oversubscribed CI cores. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def nbody_tiny(tmp_path_factory):
    """A small real N-body dataset (train.h5 / test.h5) written by `invattn simulate`."""
    out = tmp_path_factory.mktemp("nbody_tiny")
    rc = cli(["simulate", "preset=demo", f"out={out}", "n_train=96", "n_test=32", "seed=11"])
    assert rc == 0
    return out


# --- SLURM (slurm/dev-cluster.sh) -----------------------------------------------------------
# Tests marked @pytest.mark.slurm take the `slurm_cluster` fixture.  Without a controller
# they are skipped with the reason -- except under CI (CI=true), where a missing cluster is
# a failure: .ci/run starts one, so its absence is a broken pipeline, not an optional extra.


def _slurm_unavailable() -> str | None:
    """Why no SLURM controller can be used here (None if one answers)."""
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return "sinfo is not installed"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo timed out after 30 s"
    if proc.returncode != 0:
        return f"no SLURM controller answers ({proc.stderr.strip() or f'sinfo exit {proc.returncode}'})"
    if not proc.stdout.strip():
        return "the SLURM controller reports no nodes"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """A running SLURM cluster: ``{node name: state}`` from ``sinfo``.

    Skips when none answers (start one with ``bash slurm/dev-cluster.sh up``, as root);
    fails instead when the environment variable CI is set to a true value.
    """
    import os
    import subprocess

    problem = _slurm_unavailable()
    if problem:
        msg = f"SLURM unavailable: {problem}; start it with `bash slurm/dev-cluster.sh up`"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{msg} (CI is set, so this is an error, not a skip)")
        pytest.skip(msg)
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split() for line in sorted(set(out.splitlines())))


@pytest.fixture(scope="session")
def slurm(slurm_cluster):
    """Alias of ``slurm_cluster``."""
    return slurm_cluster
