"""The training runtime shared by every task: build a run, then :func:`fit` it.

``train(cfg, reporter=...)`` is what both ``invattn train`` and the Ray Tune trainable call:
it builds the :class:`~.run_checkpoint.Run` (task, model, optimizer, LR schedule), restores it
from ``run_dir``'s checkpoint when resuming, and hands it to :func:`fit`, which runs
:func:`train_epoch` and :func:`evaluate` per epoch, writes the run checkpoint
(:mod:`.run_checkpoint`) and tells the callbacks (:mod:`.callbacks`: metrics file, console,
progress bar, and ``reporter(metrics, checkpoint_dir)`` once each epoch's checkpoint is on disk).
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from invattn.checks import check_folder, check_int, is_number
from invattn.pipeline.training.callbacks import Callback, Console, MetricsFile, ProgressBar, Reporter
from invattn.pipeline.training.checkpoint import write_text_atomic
from invattn.pipeline.training.malloc import keep_freed_memory
from invattn.pipeline.training.run_checkpoint import (Run, checkpoint_path, count_parameters,
                                                      restore_run, resume_state, save_run)
from invattn.pipeline.training.run_lock import run_dir_lock
from invattn.pipeline.training.schedule import lr_factor
from invattn.pipeline.training.task import make_task

__all__ = ["train", "fit", "train_epoch", "evaluate", "build_run", "build_optimizer", "validate_settings", "make_task",
           "resolve_device", "checkpoint_path", "count_parameters"]

ReportFn = Callable[[dict, Path], None]


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


def validate_settings(cfg: DictConfig) -> None:
    """Clear errors for settings that would otherwise fail deep inside training (also run by a
    sweep before it starts any trial). Raises ``ValueError`` naming the key."""
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
    check_folder("run_dir", cfg.run_dir)


def train(cfg: DictConfig, *, reporter: ReportFn | None = None,
          callbacks: Sequence[Callback] = ()) -> dict:
    """Train ``cfg.task`` until ``cfg.train.epochs``; resume from ``run_dir`` when asked.

    Returns the last epoch's metrics. ``callbacks`` run after the standard ones (metrics file,
    console, progress bar, then ``reporter``).

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
    validate_settings(cfg)
    keep_freed_memory()  # no page faults on the per-step tensors (see pipeline/training/malloc.py)
    # Build everything a setting can refuse before run_dir is created and locked, so a refused
    # run leaves no empty run_dir behind (and never touches an existing one).
    run = build_run(cfg)
    standard = [MetricsFile(), Console(), ProgressBar(cfg.train.progress)]
    if reporter is not None:
        standard.append(Reporter(reporter))
    run_dir = Path(cfg.run_dir)
    with run_dir_lock(run_dir):
        start_epoch, last = 0, {}
        ckpt_file = checkpoint_path(run_dir)
        if bool(cfg.resume) and ckpt_file.is_file():
            state = resume_state(ckpt_file, cfg, run.device)
            start_epoch = restore_run(run, state)
            last = dict(state["metrics"]) if start_epoch >= int(cfg.train.epochs) else {}
        elif ckpt_file.is_file() and not bool(cfg.resume):
            raise FileExistsError(f"{run_dir} already holds a checkpoint; pass resume=true to continue "
                                  f"it or choose another run_dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        return fit(run, cfg, start_epoch=start_epoch, callbacks=[*standard, *callbacks], last=last)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> tuple:
    """``(optimizer, scheduler)``: Adam (``optim.lr``, ``optim.weight_decay``) and the per-epoch
    LR factor of ``optim.schedule`` (:func:`.schedule.lr_factor`).

    Raises
    ------
    ValueError
        Unknown schedule name (checked here, before any work).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.optim.lr),
                                 weight_decay=float(cfg.optim.weight_decay))
    factor = functools.partial(
        lr_factor, epochs=int(cfg.train.epochs), schedule=str(cfg.optim.schedule),
        warmup_epochs=int(cfg.optim.warmup_epochs), min_factor=float(cfg.optim.min_lr_factor))
    factor(0)  # validate the schedule name before any work
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_run(cfg: DictConfig) -> Run:
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
    optimizer, scheduler = build_optimizer(cfg, model)
    return Run(task=task, model=model, optimizer=optimizer, scheduler=scheduler, device=device)


def train_epoch(run: Run, epoch: int, *, grad_clip=None, on_batch=None) -> float:
    """One pass over the task's training batches of ``epoch``; returns the mean batch loss.

    ``on_batch(mean_loss_so_far)`` is called after each optimizer step.

    Raises
    ------
    FloatingPointError
        A non-finite loss (the message suggests a lower ``optim.lr``).
    """
    run.model.train()
    total, n = 0.0, 0
    for batch in run.task.train_batches(epoch, run.device):
        run.optimizer.zero_grad(set_to_none=True)
        loss = run.task.loss(run.model, batch)
        if not torch.isfinite(loss):
            group = run.optimizer.param_groups[0]
            lr = group.get("initial_lr", group["lr"])  # the configured optim.lr, before any schedule
            raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}; "
                                     f"lower optim.lr (now {lr})")
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), float(grad_clip))
        run.optimizer.step()
        total, n = total + loss.item(), n + 1
        if on_batch is not None:
            on_batch(total / n)
    return total / max(n, 1)


def evaluate(run: Run) -> dict[str, float]:
    """The task's evaluation metrics of the model (in eval mode)."""
    run.model.eval()
    return run.task.evaluate(run.model, run.device)


def fit(run: Run, cfg: DictConfig, *, start_epoch: int = 0, callbacks: Sequence[Callback] = (),
        last: dict | None = None) -> dict:
    """Epochs ``start_epoch .. train.epochs - 1`` of ``run``: train, step the LR schedule,
    evaluate every ``train.eval_every`` epochs (and at the end), checkpoint every epoch.

    Returns the last epoch's record (``last`` when no epoch is left to run).

    Raises
    ------
    FloatingPointError
        A non-finite loss, or non-finite final metrics.
    OSError
        A checkpoint or metrics line could not be written.
    """
    tr = cfg.train
    epochs, n_params = int(tr.epochs), count_parameters(run.model)
    ckpt_file = checkpoint_path(cfg.run_dir)
    record: dict = dict(last or {})

    def each(hook, *args):
        for callback in callbacks:
            getattr(callback, hook)(*args)

    try:
        each("on_fit_start", run, cfg, start_epoch)
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            each("on_epoch_start", epoch)
            train_loss = train_epoch(run, epoch, grad_clip=tr.grad_clip,
                                     on_batch=lambda loss: each("on_batch_end", loss))
            each("on_train_end", epoch)
            lr = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
                      "seconds_per_epoch": time.perf_counter() - t0, "params": n_params}
            if epoch + 1 == epochs or (epoch + 1) % int(tr.eval_every) == 0:
                record.update(evaluate(run))
            each("on_epoch_end", record)
            save_run(ckpt_file, run, cfg, epoch=epoch + 1, metrics=record)
            each("on_checkpoint", record, ckpt_file.parent)
    finally:
        each("on_fit_end")
    if record and not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
        raise FloatingPointError(f"non-finite metrics at the end of training: {record}")
    return record


