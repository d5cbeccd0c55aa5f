"""The installed code lives under one namespace, ``invattn``, and shadows none of a user's packages.

A research project commonly has its own ``models`` or ``pipeline`` package (EGNN's repository has a
``models`` one); ours must import beside it, both from the editable checkout and from a built wheel.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("models", "pipeline", "simulator", "sweeps")

# Imports our code and the user's own ``models`` package side by side, then checks that none of our
# modules went into sys.modules under a bare top-level name.
PROBE = textwrap.dedent("""
    import sys
    import models                                  # the user's package, from the current directory
    import invattn.models.attention, invattn.cli, invattn.sweeps.cli, invattn.simulator.cli
    from invattn.pipeline.config import config_dir
    assert models.MARKER == "user", models.__file__
    bare = sorted(m for m in sys.modules if m.split(".")[0] in {top!r} and m != "models")
    assert not bare, bare
    assert (config_dir() / "train_nbody.yaml").is_file(), config_dir()
    print("ok", invattn.models.attention.__file__)
""")


def user_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text('MARKER = "user"\n')
    return project


def test_imports_beside_a_users_models_package(tmp_path):
    project = user_project(tmp_path)
    proc = subprocess.run([sys.executable, "-c", PROBE.format(top=TOP_LEVEL)], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_no_module_imports_a_bare_top_level_package():
    """Every import in our code goes through ``invattn.``: a bare ``from models import`` would
    silently pick up a user's package of that name."""
    offenders = []
    for folder in (*TOP_LEVEL, "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == Path(__file__).resolve():  # its probe imports the user's ``models`` on purpose
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                words = line.split()
                if len(words) >= 2 and words[0] in ("from", "import") and words[1].split(".")[0] in TOP_LEVEL:
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.slow
def test_built_wheel_runs_from_its_own_files(tmp_path):
    """``pip install .`` (non-editable): the wheel holds the code under ``invattn/`` and the configs as
    package data; unpacked alone (the editable checkout's import hook removed), ``invattn demo --help``
    runs and imports beside a user's ``models`` package."""
    # Build from a copy of the tracked files (as `pip install` from a fresh clone would): building in
    # the checkout would leave a build/ folder whose stale modules a later wheel could pick up.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    source = tmp_path / "source"
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(source)], check=True, timeout=600, capture_output=True)
    (wheel,) = wheels.glob("invattn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("invattn/models/attention.py", "invattn/cli.py", "invattn/configs/train_nbody.yaml",
                     "invattn/configs/sweep/demo.yaml", "invattn/pipeline/qm9/uncharacterized_ids.txt"):
        assert expected in names, expected
    assert not [n for n in names if n.split("/")[0] in TOP_LEVEL], "a bare top-level package in the wheel"
    # every module and config of the checkout is in the wheel (a new subpackage must be listed in
    # pyproject's `packages`, or a non-editable install silently lacks it)
    shipped = {f"invattn/{p.relative_to(REPO / 'invattn')}" for p in (REPO / "invattn").glob("*.py")}
    for folder in (*TOP_LEVEL, "configs"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                shipped.add(f"invattn/{path.relative_to(REPO)}")
    missing = sorted(shipped - set(names))
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    project = user_project(tmp_path)
    # Drop the checkout's editable finder so only the unpacked wheel can provide ``invattn``.
    isolate = (f"import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
               f"getattr(f, '__module__', '') + getattr(f, '__name__', '')]; sys.path.insert(0, {str(site)!r}); ")
    proc = subprocess.run([sys.executable, "-c", isolate + "exec(" + repr(PROBE.format(top=TOP_LEVEL)) + ")"],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(site) in proc.stdout, proc.stdout
    demo = subprocess.run([sys.executable, "-c", isolate + "from invattn.cli import main; "
                           "sys.argv = ['invattn', 'demo', '--help']; sys.exit(main())"],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "demo" in demo.stdout
