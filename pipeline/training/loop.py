"""The training loop shared by every task: Adam, LR schedule, per-epoch evaluation,
atomic per-epoch checkpoints, exact resume, JSON-lines + TensorBoard metrics.

``train(cfg, reporter=...)`` is what both ``invattn train`` and the Ray Tune trainable call;
``reporter(metrics, checkpoint_dir)`` is invoked after each epoch's checkpoint is on disk.
"""
from __future__ import annotations

import functools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from invattn.checks import check_int, is_number
from invattn.pipeline.config import flat_keys
from invattn.pipeline.training.checkpoint import load_checkpoint, save_checkpoint, write_text_atomic
from invattn.pipeline.training.malloc import keep_freed_memory
from invattn.pipeline.training.metrics_log import MetricsLog
from invattn.pipeline.training.run_lock import run_dir_lock
from invattn.pipeline.training.schedule import lr_factor
from invattn.pipeline.training.task import COMMON_RUN_DEFINING, make_task, task_class

__all__ = ["train", "make_task", "resolve_device", "checkpoint_path", "count_parameters"]

log = logging.getLogger(__name__)

Reporter = Callable[[dict, Path], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available (e.g. a GPU given by SLURM), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


def checkpoint_path(run_dir) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _progress(total: int, desc: str, mode: str):
    show = sys.stderr.isatty() if mode == "auto" else mode in (True, "true", "on", "yes")
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _changed_settings(saved: DictConfig, cfg: DictConfig) -> list[str]:
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


def _validate(cfg: DictConfig) -> None:
    """Clear errors for settings that would otherwise fail deep inside training."""
    for key in ("train.epochs", "train.batch_size", "train.eval_batch_size", "train.eval_every"):
        check_int(key, OmegaConf.select(cfg, key), 1)
    check_int("train.num_threads", OmegaConf.select(cfg, "train.num_threads"), 0)
    check_int("optim.warmup_epochs", OmegaConf.select(cfg, "optim.warmup_epochs"), 0)
    for key, positive in (("optim.lr", True), ("optim.weight_decay", False)):
        value = OmegaConf.select(cfg, key)
        if not is_number(value) or value < 0 or (positive and value == 0):
            kind = "a positive" if positive else "a non-negative"
            raise ValueError(f"{key} must be {kind} number, got {value!r}")
    # Keys some tasks lack (N-body only) are checked when present.
    for key in ("data.max_train_sims", "data.max_test_sims"):  # null: every simulation
        check_int(key, OmegaConf.select(cfg, key, default=None), 1, null=True)
    val_sims = OmegaConf.select(cfg, "data.val_sims", default=None)
    if val_sims is not None:
        check_int("data.val_sims", val_sims, 0)
    for key, allow_zero in (("train.grad_clip", False), ("train.velocity_loss_weight", True)):
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if not is_number(value) or value < 0 or (value == 0 and not allow_zero):
            kind = "a non-negative number" if allow_zero else "a positive number or null (off)"
            raise ValueError(f"{key} must be {kind}, got {value!r}")
    progress = OmegaConf.select(cfg, "train.progress", default="auto")
    if progress not in ("auto", True, False):
        raise ValueError(f"train.progress must be auto, true or false, got {progress!r}")
    run_dir = Path(str(cfg.run_dir))
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir {run_dir} is a file, not a folder; choose another run_dir")


def train(cfg: DictConfig, *, reporter: Reporter | None = None) -> dict:
    """Train ``cfg.task`` until ``cfg.train.epochs``; resume from ``run_dir`` when asked.

    Returns the last epoch's metrics.

    Raises
    ------
    FileNotFoundError
        Missing data files (the message says how to make them).
    ValueError
        Invalid settings, or a checkpoint in ``run_dir`` whose model settings differ from
        ``cfg`` (resume would silently train another model).
    RunDirBusyError
        Another process is training in ``run_dir`` (an ``OSError``).
    OSError
        A checkpoint could not be written (e.g. no space left on device); the previous
        checkpoint is kept.
    """
    _validate(cfg)
    keep_freed_memory()  # no page faults on the per-step tensors (see pipeline/training/malloc.py)
    # Build everything a setting can refuse before run_dir is created and locked, so a refused
    # run leaves no empty run_dir behind (and never touches an existing one).
    parts = _build(cfg)
    with run_dir_lock(Path(cfg.run_dir)):
        return _train(cfg, parts, reporter)


def _build(cfg: DictConfig) -> tuple:
    """Device, task (data), model, optimizer and LR schedule for ``cfg``; writes nothing."""
    tr = cfg.train
    if int(tr.num_threads) > 0:
        torch.set_num_threads(int(tr.num_threads))
    device = resolve_device(str(tr.device))
    torch.manual_seed(int(cfg.seed))

    task = make_task(cfg)
    try:
        model = task.build_model().to(device)
    except (TypeError, ValueError) as exc:  # the model names the argument; say which section
        section = "egnn" if cfg.get("architecture") == "egnn" else "model"
        raise ValueError(f"invalid {section}.* setting: {exc}") from exc
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.optim.lr),
                                 weight_decay=float(cfg.optim.weight_decay))
    factor = functools.partial(
        lr_factor, epochs=int(tr.epochs), schedule=str(cfg.optim.schedule),
        warmup_epochs=int(cfg.optim.warmup_epochs), min_factor=float(cfg.optim.min_lr_factor))
    factor(0)  # validate the schedule name before any work
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return device, task, model, optimizer, scheduler


def _train(cfg: DictConfig, parts: tuple, reporter: Reporter | None) -> dict:
    run_dir = Path(cfg.run_dir)
    tr = cfg.train
    device, task, model, optimizer, scheduler = parts
    n_params = count_parameters(model)
    config_yaml = OmegaConf.to_yaml(cfg)

    start_epoch = 0
    ckpt_file = checkpoint_path(run_dir)
    if bool(cfg.resume) and ckpt_file.is_file():
        state = load_checkpoint(ckpt_file, map_location=device)
        changed = _changed_settings(OmegaConf.create(state["config"]), cfg)
        if changed:
            raise ValueError(f"{ckpt_file} was trained with other settings ({'; '.join(changed)}); "
                             f"resume with the same settings, or start a new run_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        task.load_state_dict(state.get("task_state", {}))
        torch.set_rng_state(state["rng_torch"].cpu())
        start_epoch = int(state["epoch"])
        log.info("resumed %s at epoch %d", ckpt_file, start_epoch)
    elif ckpt_file.is_file() and not bool(cfg.resume):
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass resume=true to continue "
                              f"it or choose another run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_yaml)
    metrics_log = MetricsLog(run_dir, resume_epoch=start_epoch, tensorboard=bool(tr.tensorboard))
    kind = type(model).__name__
    group = f" group={model.config['group']}" if "group" in model.config else ""  # not the EGNN
    print(f"[{cfg.task}] {kind}{group} params={n_params} device={device} run_dir={run_dir} "
          f"epochs {start_epoch}->{tr.epochs}", flush=True)

    record: dict = dict(state["metrics"]) if start_epoch >= int(tr.epochs) else {}
    try:
        for epoch in range(start_epoch, int(tr.epochs)):
            t0 = time.perf_counter()
            model.train()
            total, n = 0.0, 0
            bar = _progress(task.n_train_batches(), f"epoch {epoch + 1}/{tr.epochs}", tr.progress)
            for batch in task.train_batches(epoch, device):
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}; "
                                             f"lower optim.lr (now {cfg.optim.lr})")
                loss.backward()
                if tr.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(tr.grad_clip))
                optimizer.step()
                total, n = total + loss.item(), n + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total / n:.3g}")
            if bar is not None:
                bar.close()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            train_seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "train_loss": total / max(n, 1), "lr": lr,
                      "seconds_per_epoch": train_seconds, "params": n_params}
            last = epoch + 1 == int(tr.epochs)
            if last or (epoch + 1) % int(tr.eval_every) == 0:
                model.eval()
                record.update(task.evaluate(model, device))
            metrics_log.log(record)
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                "task_state": task.state_dict(), "rng_torch": torch.get_rng_state(),
                "config": OmegaConf.to_container(cfg, resolve=True),
                "model_hparams": dict(model.config),  # what build_model rebuilds it from
                "metrics": record, "params": n_params,
            }, ckpt_file)
            units = type(task).metric_units(cfg)  # QM9: MAE in meV, D, ... (printed)
            print(" ".join((f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
                           + (f" {units[k]}" if k in units else "") for k, v in record.items()), flush=True)
            if reporter is not None:
                reporter(dict(record), ckpt_file.parent)
    finally:
        metrics_log.close()
    if record and not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
        raise FloatingPointError(f"non-finite metrics at the end of training: {record}")
    return record
