"""The N-body task: predict the state ``delta_frames`` frames ahead (paper section 3, Table 1).

Loss: mean squared error over displacement and velocity-change components together.
Metrics (test split): ``mse_x`` and ``mse_v``, the mean squared error of predicted positions
and velocities (Table 1), beside two baselines computed on the same windows:
``zero_change`` (the state does not move) and ``constant_velocity`` (x + v * horizon, v kept).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.nbody import NBodyWindows
from pipeline.training.rotations import random_rotations

__all__ = ["NBodyTask", "require_3d"]


def require_3d(path: Path) -> None:
    """Refuse data that are not 3D before anything is loaded or built.

    The networks combine 3-vectors through cross products and 3x3 subdeterminants (paper
    eq. 6-8); 2D trajectories (e.g. ``preset=nri2d``) are not supported by the model yet.
    A missing or unreadable file is left to :class:`NBodyWindows`, which explains it.
    """
    if not path.is_file():
        return
    from simulator.io import read_attributes

    try:
        dim = read_attributes(path).get("dim")
    except OSError:
        return
    if dim is not None and int(dim) != 3:
        raise ValueError(f"{path} holds {dim}D trajectories (dim={dim}); the models are 3D only "
                         f"(cross products and 3x3 subdeterminants): 2D is not supported by the model "
                         f"yet. Simulate 3D data, e.g. `invattn simulate preset=paper`")


class NBodyTask:
    """Data, model construction, loss and evaluation for N-body training."""

    name = "nbody"
    default_metric = "test_mse_x"

    def __init__(self, cfg: DictConfig, dtype=torch.float32):
        data = cfg.data
        root = Path(data.dir)
        self.dtype = dtype
        self.seed = int(cfg.seed)
        self.batch_size = int(cfg.train.batch_size)
        self.eval_batch_size = int(cfg.train.eval_batch_size)
        self.augment = bool(data.augment_rotations)
        for name in (data.train_file, data.test_file):
            require_3d(root / name)
        self.train_set = NBodyWindows(root / data.train_file, delta_frames=data.delta_frames,
                                      train=True, max_sims=data.max_train_sims, seed=self.seed)
        self.test_set = NBodyWindows(root / data.test_file, delta_frames=data.delta_frames,
                                     train=False, max_sims=data.max_test_sims, seed=self.seed)
        self.model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)

    def build_model(self):
        from models import NBodyModel

        return NBodyModel(**self.model_kwargs)

    def n_train_batches(self) -> int:
        return -(-len(self.train_set) // self.batch_size)

    def train_batches(self, epoch: int, device):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        for batch in self.train_set.batches(epoch, self.batch_size, dtype=torch.float64):
            if self.augment:
                rot = random_rotations(batch.positions.shape[0], gen).unsqueeze(1)  # [B,1,3,3]
                rotate = lambda x: (rot @ x.unsqueeze(-1)).squeeze(-1)  # noqa: E731
                batch.positions, batch.velocities = rotate(batch.positions), rotate(batch.velocities)
                batch.delta_positions = rotate(batch.delta_positions)
                batch.delta_velocities = rotate(batch.delta_velocities)
            yield batch.to(device, self.dtype)

    @staticmethod
    def _predict(model, batch):
        return model(batch.positions, batch.velocities, batch.charges, None)

    def loss(self, model, batch) -> torch.Tensor:
        dx, dv = self._predict(model, batch)
        return torch.cat([(dx - batch.delta_positions).pow(2).flatten(1),
                          (dv - batch.delta_velocities).pow(2).flatten(1)], dim=1).mean()

    @torch.no_grad()
    def evaluate(self, model, device) -> dict[str, float]:
        """Test-split MSEs of the model and of the two baselines."""
        sums = dict.fromkeys(["mse_x", "mse_v", "zero_change_mse_x", "zero_change_mse_v",
                              "constant_velocity_mse_x"], 0.0)
        count = 0
        horizon = self.test_set.horizon_time
        for batch in self.test_set.batches(0, self.eval_batch_size, dtype=torch.float64):
            b = batch.to(device, self.dtype)
            dx, dv = self._predict(model, b)
            dx, dv = dx.double().cpu(), dv.double().cpu()
            sums["mse_x"] += (dx - batch.delta_positions).pow(2).sum().item()
            sums["mse_v"] += (dv - batch.delta_velocities).pow(2).sum().item()
            sums["zero_change_mse_x"] += batch.delta_positions.pow(2).sum().item()
            sums["zero_change_mse_v"] += batch.delta_velocities.pow(2).sum().item()
            sums["constant_velocity_mse_x"] += (
                batch.velocities * horizon - batch.delta_positions).pow(2).sum().item()
            count += batch.delta_positions.numel()
        out = {f"test_{k}": v / count for k, v in sums.items()}
        # Constant velocity keeps v, so its velocity error is the zero-change one.
        out["test_constant_velocity_mse_v"] = out["test_zero_change_mse_v"]
        return out

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
