"""The QM9 task: regress one molecular property (paper section 3, Table 2).

Targets are normalized with the mean and standard deviation of the training split only; the
statistics are saved in the checkpoint (``task_state``).  Loss: L1 on the normalized target.
Metrics: MAE on the validation and test splits in the paper's units (meV for homo, lumo, gap;
D for mu; bohr^3 for alpha; cal/(mol K) for Cv), beside the MAE of the mean predictor (always
the training-split mean): a model that does not beat it has learnt nothing.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from pathlib import Path

from invattn.pipeline.qm9.dataset import QM9Batch, QM9Dataset, collate_qm9, target_statistics
from invattn.pipeline.qm9.units import PAPER_UNITS, to_paper_units
from invattn.pipeline.training.rotations import random_rotations
from invattn.pipeline.training.task import register_task, require_files

__all__ = ["QM9Task", "metric_units", "describe_metrics"]


SPLITS = ("valid", "test")


def metric_units(target: str) -> dict[str, str]:
    """Unit of every MAE metric of ``target`` (``{"valid_mae": "meV", ...}``)."""
    unit = PAPER_UNITS.get(target, "source units")
    return {f"{s}{kind}_mae": unit for s in SPLITS for kind in ("", "_mean_predictor")}


def describe_metrics(target: str, metrics: dict) -> str:
    """One line: the MAEs with their unit, beside the mean-predictor baseline."""
    unit = PAPER_UNITS.get(target, "source units")
    parts = [f"{s} MAE {metrics[f'{s}_mae']:.4g} {unit} (mean predictor "
             f"{metrics[f'{s}_mean_predictor_mae']:.4g} {unit})"
             for s in SPLITS if f"{s}_mae" in metrics and f"{s}_mean_predictor_mae" in metrics]
    return f"{target}: " + ", ".join(parts) if parts else ""


@register_task
class QM9Task:
    """Data, model construction, loss and evaluation for QM9 property regression."""

    name = "qm9"
    config_name = "train_qm9"
    default_metric = "valid_mae"
    report_columns = ("valid_mae", "test_mae", "valid_mean_predictor_mae")
    run_defining = ("target", "data.augment_rotations")
    added_later: dict = {}
    batch_type = QM9Batch

    @classmethod
    def check_data(cls, cfg, groups: list[str] | None = None) -> None:
        """The preprocessed folder's manifest must exist (else how to make it)."""
        root = Path(cfg.data.dir)
        require_files([root / "manifest.json"], "invattn preprocess-qm9 source=... out=", root)

    @classmethod
    def model_label(cls, cfg) -> str:
        return str(cfg.model.get("group"))

    @classmethod
    def metric_units(cls, cfg) -> dict[str, str]:
        return metric_units(str(cfg.target))

    @classmethod
    def describe(cls, cfg, metrics: dict) -> str:
        return describe_metrics(str(cfg.target), metrics)

    def __init__(self, cfg: DictConfig, dtype=torch.float32):
        self.target = str(cfg.target)
        self.dtype = dtype
        self.seed = int(cfg.seed)
        self.batch_size = int(cfg.train.batch_size)
        self.eval_batch_size = int(cfg.train.eval_batch_size)
        self.augment = bool(cfg.data.augment_rotations)
        root = cfg.data.dir
        self.train_set = QM9Dataset(root, "train", self.target)
        self.eval_sets = {s: QM9Dataset(root, s, self.target) for s in ("valid", "test")}
        if len(self.train_set) == 0:
            raise ValueError(f"the training split of {root} is empty")
        mean, std = target_statistics(self.train_set)
        self.mean, self.std = float(mean), float(std) if float(std) > 0 else 1.0
        self.model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)
        self.unit = PAPER_UNITS.get(self.target, "source units")

    @classmethod
    def model_for(cls, cfg, config: dict | None = None):
        """:class:`models.QM9Model` from ``model.*`` (or from a saved ``model.config``)."""
        from invattn.models import build_model

        kwargs = OmegaConf.to_container(cfg.model, resolve=True) if config is None else config
        return build_model("qm9", **kwargs)

    def build_model(self, config: dict | None = None):
        return self.model_for(None, self.model_kwargs if config is None else config)

    def n_train_batches(self) -> int:
        return -(-len(self.train_set) // self.batch_size)

    def _to(self, batch: QM9Batch, device) -> QM9Batch:
        # Positions are centred per molecule while still float64 (issue 11); targets stay float64.
        from dataclasses import replace

        from invattn.models.inputs import centre_positions

        centred = centre_positions(batch.positions, batch.mask, batch.positions.dtype)
        return replace(batch, positions=centred).to(device, self.dtype)

    def train_batches(self, epoch: int, device):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        loader = DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                            collate_fn=collate_qm9, generator=gen)
        for batch in loader:
            if self.augment:
                rot = random_rotations(batch.positions.shape[0], gen, batch.positions.dtype)
                batch.positions = batch.positions @ rot.transpose(1, 2)
            yield self._to(batch, device)

    def _predict(self, model, batch):
        return model(batch.atomic_numbers, batch.positions, batch.bond_types, batch.mask)

    def loss(self, model, batch) -> torch.Tensor:
        target = ((batch.target - self.mean) / self.std).to(self.dtype)
        return (self._predict(model, batch) - target).abs().mean()

    @torch.no_grad()
    def evaluate(self, model, device) -> dict[str, float]:
        out = {}
        for split, data in self.eval_sets.items():
            if len(data) == 0:
                continue
            err, base, n = 0.0, 0.0, 0
            for batch in DataLoader(data, batch_size=self.eval_batch_size, collate_fn=collate_qm9):
                b = self._to(batch, device)
                pred = self._predict(model, b).double().cpu() * self.std + self.mean
                truth = to_paper_units(self.target, batch.target.double())
                err += (to_paper_units(self.target, pred) - truth).abs().sum().item()
                base += (to_paper_units(self.target, self.mean) - truth).abs().sum().item()
                n += len(truth)
            out[f"{split}_mae"] = err / n
            out[f"{split}_mean_predictor_mae"] = base / n
        return out

    def state_dict(self) -> dict:
        return {"target": self.target, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        if state:
            if state.get("target", self.target) != self.target:
                raise ValueError(f"checkpoint was trained on target {state['target']!r}, not {self.target!r}")
            self.mean, self.std = float(state["mean"]), float(state["std"])
