"""What :func:`~.loop.fit` tells the outside world, one callback per destination.

Hooks, in the order ``fit`` calls them (every one optional)::

    on_fit_start(run, cfg, start_epoch)      run_dir exists and holds config.yaml
      on_epoch_start(epoch)                  epoch counts from 0
        on_batch_end(mean_loss)              after each optimizer step
      on_train_end(epoch)                    the epoch's batches are done
      on_epoch_end(record)                   metrics complete, before the checkpoint is written
      on_checkpoint(record, checkpoint_dir)  the epoch's checkpoint is on disk
    on_fit_end()                             always, also after an error

:class:`MetricsFile` writes ``metrics.jsonl`` and TensorBoard, :class:`Console` prints the run's
lines on stdout, :class:`ProgressBar` draws tqdm, :class:`Reporter` hands each checkpoint to a
function (the Ray Tune trainable's ``tune.report``).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from invattn.pipeline.training.metrics_log import MetricsLog
from invattn.pipeline.training.run_checkpoint import checkpoint_path, count_parameters

__all__ = ["Callback", "MetricsFile", "Console", "ProgressBar", "Reporter"]

log = logging.getLogger(__name__)


class Callback:
    """No-op hooks; subclasses override the ones they need."""

    def on_fit_start(self, run, cfg, start_epoch: int) -> None: ...

    def on_epoch_start(self, epoch: int) -> None: ...

    def on_batch_end(self, mean_loss: float) -> None: ...

    def on_train_end(self, epoch: int) -> None: ...

    def on_epoch_end(self, record: dict) -> None: ...

    def on_checkpoint(self, record: dict, checkpoint_dir: Path) -> None: ...

    def on_fit_end(self) -> None: ...


class MetricsFile(Callback):
    """``<run_dir>/metrics.jsonl`` (lines after the resumed epoch dropped) and TensorBoard scalars."""

    def __init__(self):
        self.log: MetricsLog | None = None

    def on_fit_start(self, run, cfg, start_epoch):
        self.log = MetricsLog(Path(cfg.run_dir), resume_epoch=start_epoch,
                              tensorboard=bool(cfg.train.tensorboard))

    def on_epoch_end(self, record):
        self.log.log(record)

    def on_fit_end(self):
        if self.log is not None:
            self.log.close()


class Console(Callback):
    """One line about the run, then one per epoch (``key=value``, with units where the task has them)."""

    def on_fit_start(self, run, cfg, start_epoch):
        self.units = type(run.task).metric_units(cfg)  # QM9: MAE in meV, D, ...
        if start_epoch:
            log.info("resumed %s at epoch %d", checkpoint_path(cfg.run_dir), start_epoch)
        model = run.model
        config = getattr(model, "config", {})
        group = f" group={config['group']}" if "group" in config else ""  # not the EGNN
        params = count_parameters(model)
        print(f"[{cfg.task}] {type(model).__name__}{group} params={params} device={run.device} "
              f"run_dir={Path(cfg.run_dir)} epochs {start_epoch}->{cfg.train.epochs}", flush=True)

    def on_checkpoint(self, record, checkpoint_dir):
        print(" ".join((f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
                       + (f" {self.units[k]}" if k in self.units else "") for k, v in record.items()),
              flush=True)


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running loss; ``mode``: ``auto`` (on a terminal), true, false."""

    def __init__(self, mode="auto"):
        self.show = sys.stderr.isatty() if mode == "auto" else mode in (True, "true", "on", "yes")
        self.bar = None

    def on_fit_start(self, run, cfg, start_epoch):
        self.total, self.epochs = run.task.n_train_batches(), int(cfg.train.epochs)

    def on_epoch_start(self, epoch):
        if self.show:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                            dynamic_ncols=True)

    def on_batch_end(self, mean_loss):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{mean_loss:.3g}")

    def on_train_end(self, epoch):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_fit_end(self):
        self.on_train_end(-1)  # an error mid-epoch leaves no bar behind


class Reporter(Callback):
    """Calls ``report(record, checkpoint_dir)`` once each epoch's checkpoint is on disk."""

    def __init__(self, report: Callable[[dict, Path], None]):
        self.report = report

    def on_checkpoint(self, record, checkpoint_dir):
        self.report(dict(record), checkpoint_dir)
