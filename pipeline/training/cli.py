"""``invattn train`` and ``invattn evaluate``."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from invattn.checks import check_folder
from invattn.files import write_atomic
from invattn.pipeline.training.loop import resolve_device, train
from invattn.pipeline.training.run_checkpoint import load_trained
from invattn.pipeline.training.task import task_class

__all__ = ["train_command", "evaluate_command", "evaluate_checkpoint"]


def _print_metrics(cfg: DictConfig, metrics: dict) -> str:
    """The metrics as JSON; for a task whose metrics have units (QM9) with them, and the task's
    line about them (QM9: beside the mean predictor)."""
    task = task_class(str(cfg.task))
    all_units = task.metric_units(cfg)
    if all_units:
        units = {k: u for k, u in all_units.items() if k in metrics}
        text = json.dumps({**metrics, "units": units}, indent=2)
        print(text)
        print(task.describe(cfg, metrics), flush=True)
        return text
    text = json.dumps(metrics, indent=2)
    print(text, flush=True)
    return text


def train_command(cfg: DictConfig) -> int:
    _print_metrics(cfg, train(cfg))
    return 0


def evaluate_checkpoint(checkpoint, *, data_dir: str | None = None, device: str = "auto") -> dict:
    """Metrics of a saved model on its task's evaluation split(s).

    Parameters
    ----------
    checkpoint : path
        ``<run_dir>/checkpoints/last.pt`` written by ``invattn train`` or a sweep trial.
    data_dir : str, optional
        Read the data from here instead of the directory recorded in the checkpoint.
    """
    return _evaluate(checkpoint, data_dir, device)[0]


def _evaluate(checkpoint, data_dir, device) -> tuple[dict, DictConfig]:
    dev = resolve_device(device)
    task, model, state, cfg = load_trained(checkpoint, data_dir=data_dir, device=dev)
    return {"epoch": int(state["epoch"]), **task.evaluate(model, dev)}, cfg


def evaluate_command(cfg: DictConfig) -> int:
    if not cfg.checkpoint:
        raise ValueError("checkpoint=PATH is required (e.g. runs/nbody/checkpoints/last.pt)")
    output = Path(str(cfg.output)) if cfg.output else None
    if output is not None:  # checked before the evaluation, not after it
        if output.is_dir():
            raise ValueError(f"output {output} is a folder; give the JSON file's path, e.g. "
                             f"output={output / 'metrics.json'}")
        if not output.exists():
            check_folder("output", output)  # none of its parents is a file
    metrics, run_cfg = _evaluate(cfg.checkpoint, cfg.data_dir, cfg.device)
    text = _print_metrics(run_cfg, metrics)
    if output is not None:
        write_atomic(output, text + "\n")
    return 0
