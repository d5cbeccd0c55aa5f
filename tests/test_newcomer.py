"""The newcomer path of the README (issue 13, "Newcomer path").

The last test is the path itself: a fresh ``git clone`` of this repository, ``make demo``,
then -- in a new login shell, following only the README's activation instructions -- the
README's next commands.  It clones what is committed (HEAD), as a newcomer would.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from invattn.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
QM9_CSV = REPO / "tests" / "data" / "qm9" / "qm9pack_sample_500.csv"


def bash_blocks(text: str) -> list[list[str]]:
    """The README's ```bash blocks as lists of commands (comments and blank lines dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        lines = [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
        out.append([line for line in lines if line and not line.startswith("#")])
    return out


def readme_activation() -> list[str]:
    """The block right after the two set-up commands: activation, then the next command."""
    blocks = bash_blocks(README.read_text())
    return blocks[1]


def test_readme_model_snippets_run_as_written(tmp_path):
    """Each ```python block of the README that builds models runs pasted into a fresh Python
    (they used undefined positions/charges/batch: NameError for whoever copied them)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
              if "from invattn.models import" in b]
    assert len(blocks) >= 2
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, block + proc.stderr[-2000:]


def test_readme_says_how_to_activate_right_after_the_setup_commands():
    blocks = bash_blocks(README.read_text())
    assert blocks[0][:2] == ["make demo", "make test"], "the two set-up commands come first"
    activation = readme_activation()
    assert activation[0] == "source .venv/bin/activate"
    assert activation[1].startswith("invattn ")
    # The text between the blocks says why and gives the alternative.
    between = README.read_text().split("make test")[1].split("source .venv/bin/activate")[0]
    assert "every new shell" in between and ".venv/bin/invattn" in between


def check_command(cmd: str, placeholder=lambda arg: False) -> bool:
    """Load the configs an ``invattn ...`` line would load (raises on an unknown key or a value of
    the wrong type); False, checking nothing, for help lines and lines with shell or
    ``placeholder`` arguments."""
    import shlex

    from invattn.cli import COMMANDS, command_config
    from invattn.pipeline.config import load_config
    from invattn.sweeps.cli import load_sweep_configs

    name, *args = shlex.split(cmd)[1:] or ["--help"]
    args = [a for a in args if a != "..."]  # "..." stands for more keys
    if (name not in COMMANDS or "--help" in args
            or any("$(" in a or "<" in a or placeholder(a) for a in args)):
        return False
    config, _, _ = COMMANDS[name]
    if config is None:
        load_sweep_configs(args)
    else:
        load_config(command_config(name, args), args)
    return True


def test_every_readme_command_passes_the_config_checks():
    """Every ``invattn`` line of the README names known keys with values of the right type."""
    checked = [cmd for block in bash_blocks(README.read_text()) for cmd in block
               if cmd.startswith("invattn ") and check_command(cmd)]
    assert len(checked) >= 15, checked


def test_every_docs_command_passes_the_config_checks():
    """The ``invattn`` commands of docs/*.md and slurm/README.md (code blocks and inline code)
    name keys that exist, with values of the right type: a renamed key breaks this, not a reader.
    Placeholders (``K``, ``OUT``, ``...``) are skipped."""
    def placeholder(arg: str) -> bool:
        return "..." in arg or re.search(r"=[A-Z]+$", arg) is not None

    checked = []
    for doc in [*sorted((REPO / "docs").glob("*.md")), REPO / "slurm" / "README.md"]:
        text = doc.read_text()
        lines = [line.split("  #")[0].strip() for block in re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)
                 for line in block.replace("\\\n", " ").splitlines()]
        for cmd in lines + re.findall(r"`(invattn [^`]*)`", text):
            if cmd.startswith("invattn ") and check_command(cmd, placeholder):
                checked.append(f"{doc.name}: {cmd}")
    assert len(checked) >= 15, checked


# --- `invattn simulate preset=demo` after the demo made that folder -------------------------

def test_simulate_again_keeps_the_same_dataset_and_refuses_another(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["simulate", "preset=demo", f"out={out}", "n_train=24", "n_test=8", "progress=false"]
    assert cli(args) == 0
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.h5")}
    capsys.readouterr()
    assert cli(args) == 0  # the same dataset again: kept, not refused and not recomputed
    assert "already holds this dataset (seed 42, 24 simulations), kept" in capsys.readouterr().err
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.h5")} == files
    assert cli([*args, "seed=7"]) == 2  # another dataset: refused, nothing lost
    err = capsys.readouterr().err
    assert "already exists; pass overwrite=true" in err and "attribute seed=42, expected 7" in err
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.h5")} == files


# --- QM9 training: MAE with units and a mean-predictor baseline -----------------------------

def test_qm9_training_prints_mae_with_units_and_mean_predictor(tmp_path, capsys):
    from invattn.pipeline.qm9.dataset import QM9Dataset, target_statistics
    from invattn.pipeline.qm9.units import HARTREE_TO_MEV

    data = tmp_path / "qm9"
    assert cli(["preprocess-qm9", f"source={QM9_CSV}", f"out={data}", "cluster=serial",
                "progress=false"]) == 0
    capsys.readouterr()
    assert cli(["train", "task=qm9", "preset=small", f"data.dir={data}", f"run_dir={tmp_path / 'run'}",
                "train.epochs=1", "model.n_layers=1", "train.tensorboard=false",
                "train.progress=false"]) == 0
    out = capsys.readouterr().out
    epoch_line = next(line for line in out.splitlines() if line.startswith("epoch=1 "))
    assert re.search(r"valid_mae=[\d.]+ meV valid_mean_predictor_mae=[\d.]+ meV", epoch_line), epoch_line
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"homo: valid MAE [\d.]+ meV \(mean predictor [\d.]+ meV\), "
                        r"test MAE [\d.]+ meV \(mean predictor [\d.]+ meV\)", summary), summary
    metrics = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert metrics["units"]["test_mae"] == "meV"
    # The baseline is what it says: always predicting the training-split mean.
    mean, _ = target_statistics(QM9Dataset(data, "train", "homo"))
    valid = QM9Dataset(data, "valid", "homo")
    expected = sum(abs(float(valid[i]["target"]) - float(mean)) for i in range(len(valid))) / len(valid)
    assert metrics["valid_mean_predictor_mae"] == pytest.approx(expected * HARTREE_TO_MEV, rel=1e-9)
    assert metrics["valid_mae"] != metrics["valid_mean_predictor_mae"]
    # `invattn evaluate` reports the same way.
    assert cli(["evaluate", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.pt'}"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == summary

    from invattn.sweeps.cli import load_sweep_configs  # and a QM9 sweep's table shows the baseline

    sweep_cfg, _ = load_sweep_configs(["task=qm9", f"data.dir={data}"])
    assert "valid_mean_predictor_mae" in sweep_cfg.report_metrics


# --- benchmarks: --help runs nothing, --quick exists ----------------------------------------

BENCHMARKS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_every_benchmark_takes_help_and_quick(script, tmp_path):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout[:300]  # only the usage: nothing ran
    assert "--quick" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # and nothing was written


# --- the newcomer path, end to end ------------------------------------------------------------

# A short demo sweep (one trial, 3 epochs): the path, not the model, is under test here.
DEMO_ARGS = "train.epochs=3 'search.lr=[3e-3]' 'search.subdeterminants=[4]'"  # quoted for make's shell


def reuse_environment(clone: Path) -> None:
    """Give the clone a ``.venv`` that reuses this environment's installed packages.

    A real ``make install`` takes minutes (torch, Ray, ...); CI already runs it.  The clone's
    venv sees this environment's site-packages through a ``.pth`` line (which does not load
    this checkout's editable install), a copy of the editable-install finder that maps
    ``invattn.*`` onto the clone's folders, and ``invattn`` is its console script, so everything
    runs the clone's code.  ``.installed`` is stamped after
    ``pyproject.toml``, so make finds the install up to date (checked before ``make demo``).
    """
    venv = clone / ".venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                    str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_invattn_reuse.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")
    # The clone's code under the ``invattn`` namespace: this environment's editable-install finder
    # (setuptools writes it from pyproject's package-dir mapping), pointed at the clone.
    finder = next(Path(sysconfig.get_paths()["purelib"]).glob("__editable___invattn_*_finder.py"), None)
    assert finder is not None, "run the tests from the editable install (make install)"
    Path(site, finder.name).write_text(finder.read_text().replace(str(REPO), str(clone)))
    Path(site, "__editable__.invattn.pth").write_text(f"import {finder.stem}; {finder.stem}.install()\n")
    script = venv / "bin" / "invattn"
    script.write_text(f"#!{python}\nimport sys\nfrom invattn.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    stamp = venv / ".installed"
    stamp.touch()
    t = (clone / "pyproject.toml").stat().st_mtime
    os.utime(stamp, (t + 60, t + 60))


def test_newcomer_path_fresh_clone_make_demo_then_readme_commands(tmp_path):
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.fail("the newcomer path needs git and make (README's first commands)")
    clone = tmp_path / "invattn"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    reuse_environment(clone)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # Safety: make must not (re)install into anything here.
    assert subprocess.run(["make", "-q", "install"], cwd=clone, env=env).returncode == 0

    demo = subprocess.run(["make", "demo", f"DEMO_ARGS={DEMO_ARGS}"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "beats the constant-velocity baseline" in demo.stdout
    data = clone / "data" / "nbody_demo"
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in data.glob("*.h5")}
    assert set(files) == {"train.h5", "test.h5"}

    # A new login shell, with only what the README says: activate, then its next commands.
    simulate_demo = next(cmd for block in bash_blocks(README.read_text()) for cmd in block
                         if cmd.startswith("invattn simulate preset=demo"))
    script = " && ".join([f"cd {clone}", *readme_activation(), simulate_demo])
    shell_env = {k: v for k, v in env.items() if k not in ("PATH",)}
    shell_env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    shell = subprocess.run(["bash", "-lc", script], env=shell_env, capture_output=True, text=True,
                           timeout=300)
    assert shell.returncode == 0, f"{script}\n{shell.stdout[-2000:]}\n{shell.stderr[-2000:]}"
    assert "usage: invattn <command>" in shell.stdout
    assert "already holds this dataset" in shell.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in data.glob("*.h5")} == files
