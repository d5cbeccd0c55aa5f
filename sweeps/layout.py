"""Where a sweep keeps its files: the one place that lays them out.

``<results_dir>/<name>/``
    the results: ``trials.csv``, ``best.json``, and ``sweep.yaml`` / ``train.yaml`` (the settings
    ``resume=true`` continues with).
``<storage_path>/<name>/`` (``storage_path`` null: ``<results_dir>/<name>/ray/<name>/``)
    Tune's experiment: its saved state, the trial folders and their checkpoints; this is what
    ``resume=true`` restores.

The runner, the submitit launcher, the demo, ``reproduce-table1`` and ``slurm/sweep.sh`` (through
``python -m invattn.sweeps.cli --can-resume``) all read the paths here, so ``storage_path`` is honoured
everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = ["SweepLayout"]


@dataclass(frozen=True)
class SweepLayout:
    """The folders of one sweep (absolute paths).

    Attributes
    ----------
    results : Path
        ``<results_dir>/<name>``: tables, best trial, saved settings.
    storage : Path
        Tune's ``storage_path``: ``storage_path`` if set, else ``<results>/ray``.
    name : str
        The sweep's name (Tune's experiment name).
    """

    results: Path
    storage: Path
    name: str

    @classmethod
    def of(cls, sweep_cfg: DictConfig) -> "SweepLayout":
        """The layout a sweep config describes (``results_dir``, ``name``, ``storage_path``)."""
        results = Path(sweep_cfg.results_dir).resolve() / str(sweep_cfg.name)
        storage = sweep_cfg.get("storage_path")
        return cls(results, Path(storage).resolve() if storage else results / "ray", str(sweep_cfg.name))

    @classmethod
    def of_results(cls, results: Path) -> "SweepLayout":
        """The layout of a sweep that ran, from its results folder: the ``storage_path`` it saved
        in ``sweep.yaml`` (none saved: the default ``<results>/ray``)."""
        results = Path(results).resolve()
        saved = results / "sweep.yaml"
        storage = OmegaConf.load(saved).get("storage_path") if saved.is_file() else None
        return cls(results, Path(storage).resolve() if storage else results / "ray", results.name)

    @property
    def experiment(self) -> Path:
        """Tune's experiment folder (``Tuner.restore`` reads it; trials live below it)."""
        return self.storage / self.name

    def can_resume(self) -> bool:
        """True when Tune saved the state of this sweep, so ``resume=true`` can continue it."""
        from ray import tune

        return self.experiment.is_dir() and tune.Tuner.can_restore(str(self.experiment))
