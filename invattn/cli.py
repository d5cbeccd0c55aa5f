"""The ``invattn`` console script: ``invattn <command> [key=value ...]``.

Each command is a function ``run(cfg: DictConfig) -> int | None`` in some module, loaded
lazily so that ``invattn simulate`` does not import torch or Ray.  To add a command, add a
row to :data:`COMMANDS`.

This dispatcher sits at the top of the package: it names every command module, and none of
them imports it back (they share :func:`invattn.guard.run_guarded` instead).
"""
from __future__ import annotations

import importlib
import os
import sys

from invattn.guard import run_guarded
from invattn.pipeline.config import describe_keys, load_config

# name -> (config name, "module:function", one-line summary).  A config name "{task}" is the
# registered task's config (pipeline.training.task), chosen by a task=... override (default nbody).  A config name of None hands
# the raw argument list to the function, which then parses it itself (``sweep`` nests the
# training config under ``train.``).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": ("simulate", "invattn.simulator.cli:simulate_command",
                 "simulate charged N-body trajectories into HDF5 (train.h5, test.h5)"),
    "simulate-merge": ("simulate", "invattn.simulator.cli:merge_command",
                       "join simulation shards into one HDF5 file with a virtual dataset"),
    "preprocess-qm9": ("preprocess_qm9", "invattn.pipeline.qm9.cli:preprocess_command",
                       "parse real QM9 (xyz dir, .tar.bz2, qm9pack CSV) into HDF5 shards with Dask"),
    "train": ("{task}", "invattn.pipeline.training.cli:train_command",
              "train a model (task=nbody or task=qm9) with checkpoints and resume"),
    "evaluate": ("evaluate", "invattn.pipeline.training.cli:evaluate_command",
                 "evaluate a checkpoint on its test split"),
    "sweep": (None, "invattn.sweeps.cli:sweep_command",
              "Ray Tune sweep over learning rate and subdeterminant sampling"),
    "reproduce-table1": ("reproduce_table1", "invattn.sweeps.table1:reproduce_command",
                         "reproduce the paper's N-body Table 1 with an EGNN row (lr on validation, 3 seeds)"),
    "reproduce-nbody-egnn": ("reproduce_nbody_egnn", "invattn.sweeps.table1:reproduce_command",
                             "the EGNN paper's N-body benchmark (frame 30 -> 40): E3, SE3 and EGNN"),
    "lorentz": ("lorentz", "invattn.pipeline.lorentz.train:lorentz_command",
                "Lorentz-equivariant model vs DeepSets on decay four-momenta, tested on boosted events"),
    "demo": (None, "invattn.sweeps.demo:demo_command",
             "the newcomer demo: small N-body dataset, small local sweep, results table"),
}


# models.groups.GROUP_NAMES, spelled out so that --help does not import torch (a test keeps them equal).
GROUPS_HELP = ("groups (model.group=...): E2, SE2, E3, SE3, E(d), SE(d) (any d >= 2, e.g. E4), "
               "O(1,3), SO+(1,3)\n  N-body: E3/SE3 on 3D data, E2/SE2 on 2D data (preset=nri2d); "
               "QM9: E3/SE3; Lorentz groups: the four-momentum task (docs/lorentz.md)")


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {n.ljust(width)}  {s}" for n, (_, _, s) in COMMANDS.items())
    return ("usage: invattn <command> [key=value ...]\n"
            "       invattn <command> --help   (lists the keys and their defaults)\n\n"
            f"commands:\n{rows}\n\n{GROUPS_HELP}\n")


def command_config(name: str, args: list[str]) -> str:
    """The config name of command ``name`` given its ``key=value`` arguments.

    Raises
    ------
    ValueError
        ``task=`` names no registered task (the message lists them).
    """
    config_name = COMMANDS[name][0]
    if config_name != "{task}":
        return config_name
    from invattn.pipeline.training.task import task_class  # imports torch: only for training commands

    return task_class(next((a.split("=", 1)[1] for a in args if a.startswith("task=")), "nbody")).config_name


def _print_help(*parts: str) -> None:
    """Print help text; a reader that leaves early (``invattn --help | head``) is not an error."""
    try:
        print("\n".join(parts), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help(_usage())
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(name, list(COMMANDS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"invattn: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    config_name, target, summary = COMMANDS[name]
    module, func = target.split(":")
    if config_name is None:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    try:
        config_name = command_config(name, args)
    except ValueError as exc:  # an unknown task=
        print(f"invattn {name}: error: {exc}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in args):
        # The values shown are those of the other arguments (`invattn simulate preset=demo --help`).
        given = [a for a in args if a not in ("-h", "--help") and not a.startswith("task=")]
        return run_guarded(name, lambda: _print_help(f"invattn {name}: {summary}\n",
                                                     describe_keys(config_name, given)))
    return run_guarded(
        name, lambda: getattr(importlib.import_module(module), func)(load_config(config_name, args)))


if __name__ == "__main__":
    sys.exit(main())
