"""``invattn sweep [key=value ...]``.

An override whose top-level key is in ``configs/sweep.yaml`` configures the sweep; any other
goes to the training config of the chosen task (``configs/train_<task>.yaml``), which every
trial starts from: ``invattn sweep search.lr=[1e-3,3e-3] train.epochs=20 model.group=E3``.
(``preset``, ``resume`` and ``task`` belong to the sweep; use ``train_preset=`` for the
training preset.  Trials always resume from their own checkpoints.)
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from invattn.pipeline.config import ConfigError, describe_keys, load_config
from invattn.pipeline.training.task import task_class

__all__ = ["sweep_command", "load_sweep_configs", "can_resume_main"]

def load_sweep_configs(argv: list[str]) -> tuple[DictConfig, DictConfig]:
    """(sweep config, training config) from command-line overrides.

    With ``resume=true`` and a saved sweep, its saved configs (see :func:`_saved_configs`).
    """
    from omegaconf import OmegaConf

    from invattn.pipeline.config import config_dir

    sweep_keys = set(OmegaConf.load(config_dir() / "sweep.yaml").keys())
    top = lambda a: a.split("=", 1)[0].lstrip("+~").split(".", 1)[0]  # noqa: E731
    sweep_args = [a for a in argv if "=" not in a or top(a) in sweep_keys]
    train_args = [a for a in argv if "=" in a and top(a) not in sweep_keys]
    sweep_cfg = load_config("sweep", sweep_args)
    if sweep_cfg.resume:
        saved = _saved_configs(sweep_cfg, sweep_args, train_args)
        if saved is not None:
            return saved
    return _fresh_configs(sweep_cfg, train_args)


def _fresh_configs(sweep_cfg: DictConfig, train_args: list[str]) -> tuple[DictConfig, DictConfig]:
    """The training config of a new sweep, and the sweep's metric defaults filled in."""
    # The sweep's own training overrides come first, so the command line's win.
    train_args = [str(a) for a in (sweep_cfg.get("train_overrides") or [])] + train_args
    if sweep_cfg.train_preset and not any(a.startswith("preset=") for a in train_args):
        train_args.insert(0, f"preset={sweep_cfg.train_preset}")
    train_args.insert(0, f"task={sweep_cfg.task}")
    task = task_class(str(sweep_cfg.task))  # ValueError naming the registered tasks
    try:
        train_cfg = load_config(task.config_name, train_args)
    except ConfigError as exc:  # a misspelled sweep key lands here: suggest sweep keys too
        import difflib

        from invattn.pipeline.config import flat_keys

        bad = str(exc).split("'")[1] if "'" in str(exc) else ""
        close = difflib.get_close_matches(bad, list(flat_keys(sweep_cfg)), n=3, cutoff=0.6)
        if close:
            raise ConfigError(f"{exc} (sweep keys: did you mean {', '.join(close)}?)") from exc
        raise
    if sweep_cfg.metric is None:
        sweep_cfg.metric = task.default_metric
    if (sweep_cfg.task == "nbody" and str(sweep_cfg.metric).startswith("val_")
            and not int(train_cfg.data.get("val_sims", 0) or 0)):
        raise ConfigError(f"metric={sweep_cfg.metric} ranks trials on a validation split, but "
                          f"data.val_sims is 0; set data.val_sims=N (training simulations held out)")
    if sweep_cfg.report_metrics is None:
        sweep_cfg.report_metrics = list(task.report_columns) or [sweep_cfg.metric]
        if sweep_cfg.metric not in sweep_cfg.report_metrics:  # e.g. val_mse_x: show what ranks
            sweep_cfg.report_metrics = [sweep_cfg.metric, *sweep_cfg.report_metrics]
    return sweep_cfg, train_cfg


# What may differ when resuming: where and how the sweep runs, not what it computes.
RESUME_KEYS = ("resume", "name", "results_dir", "storage_path", "launcher", "ray", "submitit",
               "verbose", "allow_failed_trials", "preset", "task", "train_preset")


def _saved_configs(sweep_cfg: DictConfig, sweep_args: list[str], train_args: list[str]):
    """The configs saved by the sweep being resumed, with this run's placement settings.

    Overrides that repeat the saved values are accepted (``slurm/sweep.sh`` passes the first
    run's command line again on a requeue).

    Raises
    ------
    ValueError
        An override would change what the sweep computes (it names the keys).
    """
    from omegaconf import OmegaConf

    from invattn.sweeps.layout import SweepLayout

    folder = SweepLayout.of(sweep_cfg).results
    if not (folder / "sweep.yaml").is_file() or not (folder / "train.yaml").is_file():
        return None
    key_of = lambda a: a.split("=", 1)[0].lstrip("+~")  # noqa: E731
    sweep_changes = [key_of(a) for a in sweep_args
                     if "=" in a and key_of(a).split(".", 1)[0] not in RESUME_KEYS]
    train_changes = [key_of(a) for a in train_args]
    saved = OmegaConf.load(folder / "sweep.yaml")
    train_cfg = OmegaConf.load(folder / "train.yaml")
    if sweep_changes or train_changes:
        # Repeating the sweep's own settings is no change: a requeued slurm/sweep.sh job (or a
        # user re-running the command with resume=true) passes every override of the first run.
        fresh_sweep, fresh_train = _fresh_configs(sweep_cfg.copy(), train_args)
        if fresh_train.get("data") is not None and fresh_train.data.get("dir") is not None:
            fresh_train.data.dir = str(Path(fresh_train.data.dir).resolve())  # saved resolved
        changed = [k for k in sweep_changes
                   if OmegaConf.select(fresh_sweep, k) != OmegaConf.select(saved, k)]
        changed += [k for k in train_changes
                    if OmegaConf.select(fresh_train, k) != OmegaConf.select(train_cfg, k)]
        if changed:
            raise ValueError(f"resume=true continues sweep {sweep_cfg.name!r} with its saved settings "
                             f"({folder}/sweep.yaml, train.yaml); it cannot change "
                             f"{', '.join(dict.fromkeys(changed))}")
    for key in ("resume", "launcher", "ray", "submitit", "verbose", "storage_path", "allow_failed_trials"):
        saved[key] = sweep_cfg[key]
    OmegaConf.set_struct(saved, True)
    OmegaConf.set_struct(train_cfg, True)
    return saved, train_cfg


def sweep_command(argv: list[str]) -> int:
    import sys

    from invattn.guard import run_guarded

    if any(a in ("-h", "--help") for a in argv):
        task = next((a.split("=", 1)[1] for a in argv if a.startswith("task=")), "nbody")
        print("invattn sweep: Ray Tune sweep over learning rate and subdeterminant sampling\n")
        print(describe_keys("sweep"))
        print("\ntraining keys (every trial starts from these; e.g. train.epochs=5 model.group=E3):")
        print(describe_keys(task_class(task).config_name))
        return 0

    def body():
        sweep_cfg, train_cfg = load_sweep_configs(argv)
        if sweep_cfg.launcher == "submitit":
            from invattn.sweeps.submitit_launcher import launch

            return launch(sweep_cfg, train_cfg)
        if sweep_cfg.launcher != "local":
            raise ValueError(f"launcher={sweep_cfg.launcher!r} must be 'local' or 'submitit'")
        from invattn.sweeps.runner import run_sweep

        run_sweep(sweep_cfg, train_cfg)
        return 0

    return run_guarded("sweep", body)


def can_resume_main(argv: list[str]) -> int:
    """``python -m invattn.sweeps.cli --can-resume [key=value ...]``: exit 0 if the sweep these overrides
    describe has saved state to resume (used by slurm/sweep.sh on requeue), 1 if not."""
    import sys

    from invattn.sweeps.layout import SweepLayout

    if not argv or argv[0] != "--can-resume":
        print("usage: python -m invattn.sweeps.cli --can-resume [key=value ...]", file=sys.stderr)
        return 2
    sweep_cfg, _ = load_sweep_configs(argv[1:])
    return 0 if SweepLayout.of(sweep_cfg).can_resume() else 1


if __name__ == "__main__":
    import sys

    sys.exit(can_resume_main(sys.argv[1:]))
