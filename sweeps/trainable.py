"""The Ray Tune function trainable: one trial = one ``pipeline.training.train`` run.

Each epoch the training loop writes its checkpoint and this module hands that directory to
Tune (``tune.report(..., checkpoint=...)``); a retried or resumed trial copies Tune's latest
checkpoint back into its run directory, and the loop resumes from it exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf
from ray import tune

from invattn.pipeline.training import train
from invattn.pipeline.training.run_checkpoint import install_checkpoint
from invattn.sweeps.space import apply_trial_params

__all__ = ["run_trial"]


def run_trial(params: dict, *, train_yaml: str, num_threads: int, experiment_dir: str,
              crash_once_at_epoch=None) -> None:
    """Tune entry point.

    Parameters
    ----------
    params : dict
        The trial's sampled values (``lr``, ``subdeterminants``, optional ``seed``).
    train_yaml : str
        The resolved training config as YAML (absolute data paths).
    num_threads : int
        torch CPU threads for this trial (its CPU reservation).
    experiment_dir : str
        The experiment's folder in Tune's storage (shared by every node). The trial's run
        directory (metrics.jsonl, TensorBoard, checkpoints) is ``<experiment_dir>/<trial>/run``:
        Tune's own trial directory is node-local when the trial runs on another node.
    crash_once_at_epoch : int, optional
        Fault injection for testing the retry path: the first attempt of the trial kills its
        own worker process right after this epoch's checkpoint (a dead worker, as on a node loss).
    """
    cfg = apply_trial_params(OmegaConf.create(train_yaml), params)
    run_dir = Path(experiment_dir) / Path(tune.get_context().get_trial_dir()).name / "run"
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(run_dir)
    cfg.resume = True
    cfg.train.num_threads = int(num_threads)
    cfg.train.progress = False
    OmegaConf.set_struct(cfg, True)

    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as src:
            install_checkpoint(src, run_dir)

    marker = run_dir / ".crashed_once"

    def report(metrics: dict, ckpt_dir: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        if crash_once_at_epoch is not None and metrics["epoch"] == int(crash_once_at_epoch) \
                and not marker.exists():
            marker.touch()
            os._exit(1)

    train(cfg, reporter=report)
