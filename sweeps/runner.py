"""Run (or resume) a Ray Tune sweep and write its results table and best trial.

Results go to ``<results_dir>/<name>/``: ``trials.csv`` (one row per trial), ``best.json``
(the best trial's config and final metrics) and ``ray/`` (Tune's experiment state, trial
directories and checkpoints; this is what ``resume=true`` restores from).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from invattn.checks import check_bool, check_folder
from invattn.files import write_atomic

__all__ = ["run_sweep", "results_table", "best_trial_summary"]



def _scheduler(cfg: DictConfig, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    kind = str(cfg.scheduler.type)
    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=epochs,
                             grace_period=int(cfg.scheduler.grace_period),
                             reduction_factor=float(cfg.scheduler.reduction_factor))
    raise ValueError(f"scheduler.type={kind!r} must be 'fifo' or 'asha'")


def _absolute_paths(train_cfg: DictConfig) -> DictConfig:
    # Trials run in their own working directories (possibly on other nodes).
    cfg = train_cfg.copy()
    cfg.data.dir = str(Path(cfg.data.dir).resolve())
    return cfg


def results_table(experiment_path: Path, metric_columns: list[str]):
    """A pandas DataFrame with one row per trial: its parameters, state and last metrics.

    Read from the experiment state Tune saved on disk (it is what ``resume=true`` continues).
    ``status`` is ``OK`` (finished, or stopped early by the scheduler), ``ERROR`` (failed
    after its retries) or ``UNFINISHED`` (pending or interrupted).
    """
    import pandas as pd
    from ray.tune import ExperimentAnalysis

    rows = []
    for trial in ExperimentAnalysis(str(experiment_path)).trials:
        params, metrics = trial.config or {}, trial.last_result or {}
        row = {"trial_id": trial.trial_id,
               "status": {"TERMINATED": "OK", "ERROR": "ERROR"}.get(str(trial.status), "UNFINISHED"),
               "group": params.get("group"),
               "lr": params.get("lr", (params.get("lr_by_group") or {}).get(params.get("group"))),
               "subdeterminants": params.get("subdeterminants"),
               "seed": params.get("seed")}
        for col in ["epoch", "train_loss", "seconds_per_epoch", *metric_columns]:
            row[col] = metrics.get(col)
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial_summary(params: dict, metrics: dict, columns: list[str], with_seed: bool = False) -> str:
    """``group=E2 lr=0.001 subdeterminants=all test_mse_x=0.3692 ...``: what a trial searched over
    (its group when ``search.groups`` is swept, its seed when ``with_seed``) and its metric columns."""
    lr = params.get("lr", (params.get("lr_by_group") or {}).get(params.get("group")))
    parts = [f"group={params['group']}"] if params.get("group") is not None else []
    parts.append(f"lr={lr:.3g}" if isinstance(lr, (int, float)) else f"lr={lr}")
    parts.append(f"subdeterminants={params.get('subdeterminants')}")
    if with_seed:
        parts.append(f"seed={params.get('seed')}")
    parts += [f"{c}={metrics.get(c):.4g}" for c in columns if isinstance(metrics.get(c), (int, float))]
    return " ".join(parts)


def _last_line(error) -> str:
    """The cause of a trial's failure: the last line of its traceback, without colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def save_configs(out_dir: Path, sweep_cfg: DictConfig, train_cfg: DictConfig) -> None:
    """Keep the sweep's settings so that ``resume=true`` needs no other override."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in (("sweep.yaml", sweep_cfg), ("train.yaml", train_cfg)):
        write_atomic(out_dir / name, OmegaConf.to_yaml(cfg))


def check_data(train_cfg: DictConfig, groups: list[str] | None = None) -> None:
    """Fail before starting Ray when the training data is missing or of another dimension than the
    model's group (trials would fail anyway); every group of ``search.groups`` is checked by
    :func:`run_sweep` through ``groups``."""
    from invattn.pipeline.training.task import task_class

    task_class(str(train_cfg.task)).check_data(train_cfg, groups)


def run_sweep(sweep_cfg: DictConfig, train_cfg: DictConfig) -> dict:
    """Run the sweep described by ``sweep_cfg`` over ``train_cfg``; return the best trial.

    Raises
    ------
    ValueError
        Bad sweep settings or a search value the model refuses (before Ray starts);
        ``resume=true`` with no sweep to resume; every trial failed, or any trial failed and
        ``allow_failed_trials`` is false (results, table and best trial are written first).
    """
    import ray
    from ray import tune

    from invattn.sweeps.layout import SweepLayout
    from invattn.sweeps.ray_cluster import connect
    from invattn.sweeps.space import apply_trial_params, param_space
    from invattn.pipeline.training.run_checkpoint import CHECKPOINT_FILE
    from invattn.sweeps.trainable import run_trial

    layout = SweepLayout.of(sweep_cfg)
    out_dir, storage, exp_path = layout.results, layout.storage, layout.experiment
    metric, mode = str(sweep_cfg.metric), str(sweep_cfg.mode)
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} must be 'min' or 'max'")
    train_cfg = _absolute_paths(train_cfg)
    epochs = int(train_cfg.train.epochs)

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(sweep_cfg.name)) or ".." in str(sweep_cfg.name):
        raise ValueError(f"name={sweep_cfg.name!r} must be a plain name (letters, digits, _ . -)")
    space = None if sweep_cfg.resume else param_space(sweep_cfg.search)  # validates the grid
    check_data(train_cfg, [str(g) for g in (sweep_cfg.search.get("groups") or [])])
    if space is not None:  # before Ray starts: settings every trial would die of
        from invattn.pipeline.training.loop import validate_settings as validate_training
        from invattn.sweeps.space import check_space_against_model

        validate_training(apply_trial_params(train_cfg, {"lr": 1.0, "subdeterminants": "all"}))
        check_space_against_model(train_cfg, space)
    allow_failed = check_bool("allow_failed_trials", sweep_cfg.get("allow_failed_trials", False))
    scheduler = _scheduler(sweep_cfg, epochs)
    cpus, gpus = float(sweep_cfg.resources.cpus_per_trial), float(sweep_cfg.resources.gpus_per_trial)
    if cpus <= 0 or gpus < 0:
        raise ValueError(f"resources.cpus_per_trial must be > 0 and gpus_per_trial >= 0 (got {cpus}, {gpus})")
    check_folder("results_dir", sweep_cfg.results_dir)  # before Ray starts, as the checks below
    if sweep_cfg.get("storage_path"):
        check_folder("storage_path", sweep_cfg.storage_path)
    if bool(sweep_cfg.resume) and not tune.Tuner.can_restore(str(exp_path)):
        raise ValueError(f"resume=true but there is no sweep to resume at {exp_path}")
    if not bool(sweep_cfg.resume) and exp_path.exists() and tune.Tuner.can_restore(str(exp_path)):
        raise FileExistsError(f"a sweep named {sweep_cfg.name!r} already exists at {exp_path}; "
                              f"pass resume=true to continue it or choose another name=")
    ctx = connect(sweep_cfg.ray)
    if gpus == 0 and sweep_cfg.resources.auto_gpu and ray.cluster_resources().get("GPU", 0) > 0:
        gpus = 1.0  # SLURM gave us GPUs: one per trial unless told otherwise
    if not sweep_cfg.ray.address:  # a local instance never grows: a bigger trial would wait forever
        have = ray.cluster_resources()
        if cpus > have.get("CPU", 0) or gpus > have.get("GPU", 0):
            raise ValueError(f"each trial asks for resources.cpus_per_trial={cpus:g} and "
                             f"resources.gpus_per_trial={gpus:g}, but the local Ray instance has "
                             f"{have.get('CPU', 0):g} CPU(s) and {have.get('GPU', 0):g} GPU(s): "
                             f"no trial could ever start")
    OmegaConf.set_struct(train_cfg, False)
    train_cfg.train.device = "cuda" if gpus > 0 else train_cfg.train.device
    OmegaConf.set_struct(train_cfg, True)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, train_yaml=OmegaConf.to_yaml(train_cfg),
                             num_threads=max(1, int(cpus)), experiment_dir=str(exp_path),
                             crash_once_at_epoch=sweep_cfg.fault_injection.crash_once_at_epoch),
        {"cpu": cpus, "gpu": gpus})

    if bool(sweep_cfg.resume):
        print(f"resuming sweep from {exp_path}", flush=True)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=int(sweep_cfg.num_samples),
                scheduler=scheduler,
                max_concurrent_trials=int(sweep_cfg.max_concurrent_trials) or None),
            run_config=tune.RunConfig(
                name=str(sweep_cfg.name), storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=int(sweep_cfg.max_failures)),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=int(sweep_cfg.verbose)))
    if not bool(sweep_cfg.resume):
        save_configs(out_dir, sweep_cfg, train_cfg)
    grid = tuner.fit()

    metric_columns = list(sweep_cfg.report_metrics)
    table = results_table(exp_path, metric_columns)
    table = table.dropna(axis=1, how="all")  # e.g. no group column when groups are not swept
    if metric in table.columns:  # best first; trials without the metric last
        table = table.sort_values(metric, ascending=mode == "min", na_position="last", kind="stable")
    table.to_csv(out_dir / "trials.csv", index=False)
    unfinished = int((table.status == "UNFINISHED").sum())
    if unfinished:
        print(f"\nTrials so far:\n{table.to_string(index=False)}", flush=True)
        print(f"sweep {sweep_cfg.name!r} stopped with {unfinished} unfinished trial(s); "
              f"continue it with resume=true", flush=True)
        raise KeyboardInterrupt
    ok = [r for r in grid if not r.error and r.metrics and metric in r.metrics
          and isinstance(r.metrics[metric], (int, float)) and math.isfinite(r.metrics[metric])]
    if not ok:
        errors = "; ".join(sorted({_last_line(r.error) for r in grid if r.error}))
        raise ValueError(f"every trial of sweep {sweep_cfg.name!r} failed: {errors}")
    best = (min if mode == "min" else max)(ok, key=lambda r: r.metrics[metric])
    best_record = {
        "sweep": str(sweep_cfg.name), "metric": metric, "mode": mode,
        "params": best.config, "metrics": {k: v for k, v in best.metrics.items()
                                            if isinstance(v, (int, float, str)) and k != "config"},
        "trial_path": best.path,
        "checkpoint": str(Path(best.checkpoint.path) / CHECKPOINT_FILE) if best.checkpoint else None,
        "train_config": OmegaConf.to_container(train_cfg),
        "dashboard_url": ctx.dashboard_url,
    }
    write_atomic(out_dir / "best.json", json.dumps(best_record, indent=2, default=str) + "\n")

    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print("\nTrials:\n" + table.to_string(index=False), flush=True)
    seeds_swept = len(sweep_cfg.search.get("seeds") or []) > 1
    print(f"\nBest trial ({metric}, {mode}): "
          + best_trial_summary(best.config, best.metrics, metric_columns, with_seed=seeds_swept), flush=True)
    print(f"results: {out_dir}/trials.csv and {out_dir}/best.json", flush=True)
    # Ray's banner points TensorBoard at its temporary session folder; the trials' logs are here.
    print(f"TensorBoard (every trial's run/tensorboard): tensorboard --logdir {exp_path}", flush=True)
    failed = [r for r in grid if r.error]
    if failed and not allow_failed:
        errors = "; ".join(sorted({_last_line(r.error) for r in failed}))
        raise ValueError(f"{len(failed)} of {len(grid)} trial(s) of sweep {sweep_cfg.name!r} failed: {errors} "
                         f"(the others' results are kept in {out_dir}; allow_failed_trials=true accepts this)")
    return best_record
