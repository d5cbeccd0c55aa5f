"""Structure checks: no import circles, and one home for atomic writes, sweep folders, checks, sampling.

The import graph is read from the source (every ``import``, also inside functions, plus the
``"module:function"`` strings the dispatcher loads lazily), so a circle hidden behind a lazy import
is found too.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from invattn.checks import check_bool, check_int, is_int, is_number
from invattn.files import TMP_MARK, atomic_path, write_atomic
from invattn.models import NBodyModel, Sampling
from invattn.sweeps.layout import SweepLayout

REPO = Path(__file__).resolve().parents[1]
# Installed name -> source folder (pyproject's package-dir).
PACKAGES = {"invattn": "invattn", "invattn.models": "models", "invattn.pipeline": "pipeline",
            "invattn.simulator": "simulator", "invattn.sweeps": "sweeps"}


def _modules() -> dict[str, Path]:
    mods = {}
    for package, folder in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            mods[name] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file) or names as "module:func"."""
    mods = _modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("invattn.") and ":" in node.value:
                targets = [node.value.split(":")[0]]
            for target in targets:
                found = known(target)
                # A package's own __init__ is imported with any of its modules: not an edge here.
                if found and found != module and not module.startswith(found + "."):
                    graph[module].add(found)
    return graph


def test_no_import_circles():
    graph = import_graph()
    assert "invattn.sweeps.cli" in graph["invattn.cli"], "the dispatcher's lazy targets are edges"
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_dispatcher_is_imported_by_no_command():
    graph = import_graph()
    assert not [m for m, targets in graph.items() if "invattn.cli" in targets]


# --- one atomic-write helper -----------------------------------------------------------------

def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            assert tmp.parent == path.parent and tmp.name.startswith(".a.json" + TMP_MARK)
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
    write_atomic(path, b"new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]


def test_atomic_write_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_atomic(tmp_path / "x", "data")
    assert events == ["fsync", "replace"]


def test_no_other_module_renames_files_into_place():
    """``os.replace`` / ``.replace(`` of a temporary file appears only in invattn/files.py, and no
    module writes a whole file in place (``write_text``/``write_bytes``: a crash leaves half a file)."""
    offenders = []
    for path in _modules().values():
        if path.name == "files.py" and path.parent.name == "invattn":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(call in line for call in ("os.replace(", "os.rename(", "fsync(", ".write_text(", ".write_bytes(")):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# --- one validator set -----------------------------------------------------------------------

def test_checks_refuse_booleans_as_numbers():
    import numpy as np

    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert is_number(2.5) and not is_number(False) and not is_number(float("nan"), finite=True)
    assert check_int("n", 4, 1) == 4 and check_int("n", None, 1, null=True) is None
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1 or null, got True$"):
        check_int("n", True, 1, null=True)
    with pytest.raises(ValueError, match=r"^flag must be true or false, got 1$"):
        check_bool("flag", 1)


# --- one experiment layout -------------------------------------------------------------------

def test_sweep_layout_honours_storage_path_also_from_the_saved_config(tmp_path):
    cfg = OmegaConf.create({"results_dir": str(tmp_path / "results"), "name": "s", "storage_path": None})
    default = SweepLayout.of(cfg)
    assert default.experiment == tmp_path / "results" / "s" / "ray" / "s"
    cfg.storage_path = str(tmp_path / "tune")
    layout = SweepLayout.of(cfg)
    assert layout.results == tmp_path / "results" / "s" and layout.experiment == tmp_path / "tune" / "s"
    layout.results.mkdir(parents=True)
    (layout.results / "sweep.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert SweepLayout.of_results(layout.results) == layout  # what reproduce-table1 reads back
    assert not layout.can_resume()


# --- one typed sampling option ---------------------------------------------------------------

@pytest.mark.parametrize("value, count", [("all", None), (" ALL ", None), (4, 4), ("8", 8), (Sampling(3), 3)])
def test_sampling_parses_one_vocabulary(value, count):
    assert Sampling.parse(value) == Sampling(count)


@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "some", None, {"q": 1, "kv": 2}])
def test_sampling_refuses_in_one_sentence(bad):
    with pytest.raises(ValueError, match=r"^k must be 'all' or a positive integer, got "):
        Sampling.parse(bad, "k")


def test_model_carries_the_parsed_sampling_to_its_buffers_and_records_the_config_form():
    """The same value as a string, an int and a Sampling builds identical buffers; every map keeps
    min(k, its own count); model.config stays plain (checkpoints load with weights_only)."""
    models = [NBodyModel(vectors=4, n_layers=2, subdeterminants=k, sampling_seed=5) for k in ("6", 6, Sampling(6))]
    buffers = [{n: b for n, b in m.state_dict().items() if n.endswith("triples")} for m in models]
    assert buffers[0].keys() == buffers[1].keys() == buffers[2].keys() and buffers[0]
    for name in buffers[0]:
        assert torch.equal(buffers[0][name], buffers[1][name]) and torch.equal(buffers[0][name], buffers[2][name])
    # Queries of layer 1 and the head see 4 vectors (C(4,3) = 4 triples: all kept); keys and
    # values 5 (C(5,3) = 10: 6 drawn); layer 0 sees 1 and 2 vectors (no triple).
    sizes = {name: int(b.shape[0]) for name, b in buffers[0].items()}
    assert set(sizes.values()) == {0, 4, 6}, sizes
    assert models[2].config["subdeterminants"] == 6 and json.dumps(models[2].config)
    with pytest.raises(ValueError, match=r"subdeterminants \(C\(4,3\) triples .*\)=6 is out of range: choose 1\.\.4"):
        NBodyModel(vectors=3, subdeterminants=6)
