"""The run checkpoint: the one place that knows what ``<run_dir>/checkpoints/last.pt`` holds.

Written after every epoch by :func:`save_run`; read back by :func:`resume_state` +
:func:`restore_run` (``train`` resuming, bit for bit), by :func:`load_trained` (``invattn
evaluate``) and by :func:`install_checkpoint` (a Tune trial restored on another node). The file
is a plain dict (``torch.load(weights_only=True)``, see :mod:`.checkpoint`):

=================  ==========================================================================
``model``          the model's ``state_dict``
``model_hparams``  ``model.config``: the constructor arguments that rebuild it (``{}`` before
                   issue 14; such checkpoints are rebuilt from ``config``)
``optimizer``      ``scheduler``: their ``state_dict``\\ s
``task_state``     the task's own state (QM9: target normalization)
``rng_torch``      torch's CPU generator state after the epoch
``epoch``          epochs finished; ``metrics``: that epoch's record; ``params``: parameter count
``config``         the resolved training config (what resume compares against)
``model_format``   the models' parameter layout (:data:`models.registry.MODEL_FORMAT`)
=================  ==========================================================================
"""
from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from invattn.pipeline.config import flat_keys
from invattn.pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from invattn.pipeline.training.task import COMMON_RUN_DEFINING, make_task, task_class

__all__ = ["CHECKPOINT_FILE", "Run", "checkpoint_path", "save_run", "resume_state", "restore_run",
           "changed_settings", "load_trained", "install_checkpoint", "count_parameters"]

CHECKPOINT_FILE = "last.pt"


def checkpoint_path(run_dir) -> Path:
    """``<run_dir>/checkpoints/last.pt``; Tune hands the ``checkpoints`` folder around."""
    return Path(run_dir) / "checkpoints" / CHECKPOINT_FILE


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Run:
    """The live objects of a training run: what a run checkpoint saves and restores."""

    task: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device


def save_run(path: Path, run: Run, cfg: DictConfig, *, epoch: int, metrics: dict) -> Path:
    """Write the checkpoint of ``run`` after ``epoch`` epochs (atomically; see ``save_checkpoint``)."""
    return save_checkpoint({
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "epoch": epoch,
        "task_state": run.task.state_dict(), "rng_torch": torch.get_rng_state(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model_hparams": dict(getattr(run.model, "config", {})),  # what build_model rebuilds it from
        "metrics": metrics, "params": count_parameters(run.model),
    }, path)


def changed_settings(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """``"key: old -> new"`` for every run-defining leaf that differs.

    Settings that define a run (the common ones and the task's ``run_defining``): resuming with
    different values would silently train another model (or, for the schedule, a zero learning
    rate), so resume refuses them. A key newer than the saved checkpoint counts as the task's
    ``added_later`` value.
    """
    task = task_class(str(cfg.task))
    keys = COMMON_RUN_DEFINING + tuple(task.run_defining)

    def leaves(conf: DictConfig) -> dict:
        out = {}
        for key in keys:
            node = OmegaConf.select(conf, key)
            if isinstance(node, DictConfig):
                out.update({f"{key}.{k}": v for k, v in flat_keys(node).items()})
            else:
                out[key] = node
        return out

    old, new = leaves(saved), leaves(cfg)
    for key, value in task.added_later.items():
        if old.get(key) is None and key in new:
            old[key] = value
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def resume_state(path: Path, cfg: DictConfig, device) -> dict:
    """The checkpoint at ``path``, after checking that ``cfg`` continues the same run.

    Raises
    ------
    ValueError
        A run-defining setting differs (the message lists ``key: old -> new``), or the file is
        not a readable checkpoint of this model format (see ``load_checkpoint``).
    """
    state = load_checkpoint(path, map_location=device)
    changed = changed_settings(OmegaConf.create(state["config"]), cfg)
    if changed:
        raise ValueError(f"{path} was trained with other settings ({'; '.join(changed)}); "
                         f"resume with the same settings, or start a new run_dir")
    return state


def restore_run(run: Run, state: dict) -> int:
    """Load every saved part into ``run`` (and torch's generator); returns the epochs done."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.task.load_state_dict(state.get("task_state", {}))
    torch.set_rng_state(state["rng_torch"].cpu())
    return int(state["epoch"])


def load_trained(checkpoint, *, data_dir: str | None = None, device: torch.device) -> tuple:
    """``(task, model, state, cfg)`` of a saved run, the model in eval mode on ``device``.

    ``data_dir`` replaces the data folder recorded in the checkpoint. The model is rebuilt from
    ``model_hparams``; checkpoints that saved none (``{}``, before issue 14) from their config.
    """
    state = load_checkpoint(Path(checkpoint))
    cfg = OmegaConf.create(state["config"])
    if data_dir:
        cfg.data.dir = data_dir
    try:
        task = make_task(cfg)
    except ValueError as exc:
        if not data_dir:
            raise
        # The data's own advice ("use model.group=...") cannot be followed for a trained model.
        raise ValueError(f"{exc} (for training; {checkpoint} is trained, so point data_dir= at data like "
                         f"those it was trained on: {state['config']['data']['dir']})") from None
    task.load_state_dict(state.get("task_state", {}))
    model = task.build_model(state.get("model_hparams") or None).to(device)
    model.load_state_dict(state["model"])
    return task, model.eval(), state, cfg


def install_checkpoint(src_dir, run_dir) -> None:
    """Copy the run checkpoint of folder ``src_dir`` (Tune's copy) into ``run_dir`` unless it is
    already there (on the same node the trial's own copy usually is)."""
    src, dst = Path(src_dir) / CHECKPOINT_FILE, checkpoint_path(run_dir)
    if not (dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
