"""The N-body task: predict the state ``delta_frames`` frames ahead (paper section 3, Table 1).

Loss: ``(MSE x + w MSE v) / (1 + w)`` with ``w = train.velocity_loss_weight`` (1: the mean over
displacement and velocity-change components together; 0: positions only, as in the EGNN paper).
``architecture`` picks ours (``attention``, ``model.*``) or the EGNN baseline (``egnn``, ``egnn.*``).
Metrics (test split): ``mse_x`` and ``mse_v``, the mean squared error of predicted positions
and velocities (Table 1), beside two baselines computed on the same windows:
``zero_change`` (the state does not move) and ``constant_velocity`` (x + v * horizon, v kept).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from invattn.pipeline.nbody.dataset import NBodyBatch, NBodyWindows
from invattn.pipeline.training.rotations import random_rotations
from invattn.pipeline.training.task import register_task, require_files

__all__ = ["NBodyTask", "require_dim", "data_dim", "nbody_group", "nbody_model_kwargs", "build_nbody_model", "model_label",
           "ARCHITECTURES"]


def data_dim(path: Path) -> int | None:
    """The ``dim`` attribute of a simulator file (``None`` if absent or unreadable: the loader
    explains a missing or broken file)."""
    if not path.is_file():
        return None
    from invattn.simulator.io import read_attributes

    try:
        dim = read_attributes(path).get("dim")
    except OSError:
        return None
    return None if dim is None else int(dim)


def require_dim(path: Path, group: str | None) -> None:
    """Refuse data whose dimension is not the model's, before anything is loaded or built.

    ``group`` is ``model.group`` of the attention model (its dimension must match: ``E2``/``SE2``
    for 2D data such as ``preset=nri2d``, ``E3``/``SE3`` for 3D); ``None`` for the EGNN baseline,
    which works in any dimension.

    Raises
    ------
    ValueError
        Naming the file, its dimension and the groups that fit it.
    """
    dim = data_dim(path)
    if dim is None or group is None:
        return
    from invattn.models.groups import parse_group

    want = parse_group(group)
    if dim < 2:  # no E1/SE1: the invariants and cross products need d >= 2 (models/groups.py)
        raise ValueError(f"{path} holds {dim}D trajectories (dim={dim}), but the attention model's groups act "
                         f"on 2D or higher vectors: use architecture=egnn (any dimension), or simulate "
                         f"with dim=2 or 3")
    if want.dim != dim:
        raise ValueError(f"{path} holds {dim}D trajectories (dim={dim}), but model.group={group} acts on "
                         f"{want.dim}D vectors: use model.group=E{dim} or SE{dim} for these data")


def nbody_group(cfg) -> str | None:
    """``model.group`` when the attention model trains (``None`` for the EGNN baseline)."""
    if str(cfg.get("architecture") or "attention") == "egnn":
        return None
    return str(cfg.model.get("group"))


# ``architecture`` -> the config section that holds its model's constructor arguments.
ARCHITECTURES = {"attention": "model", "egnn": "egnn"}


def nbody_model_kwargs(cfg) -> tuple[str, dict]:
    """``(architecture, constructor arguments)`` for an N-body training config.

    ``architecture=attention`` (default; configs saved before the key existed have none) builds
    :class:`~models.NBodyModel` from ``model.*``; ``architecture=egnn`` builds the
    :class:`~models.EGNN` baseline from ``egnn.*``. Each section holds exactly its model's
    constructor arguments (``build_model("nbody", **model)``, ``EGNN(**egnn)``).

    Raises
    ------
    ValueError
        ``architecture`` is not one of :data:`ARCHITECTURES`.

    Examples
    --------
    >>> nbody_model_kwargs({"architecture": "egnn", "egnn": {"n_layers": 4, "hidden": 64}, "model": {}})
    ('egnn', {'n_layers': 4, 'hidden': 64})
    """
    name = str(cfg.get("architecture") or "attention")
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture={name!r} is not one of {', '.join(ARCHITECTURES)}")
    kwargs = cfg.get(ARCHITECTURES[name]) or {}
    if isinstance(kwargs, DictConfig):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    return name, dict(kwargs)


def build_nbody_model(architecture: str, kwargs: dict):
    """The model of :func:`nbody_model_kwargs`'s answer: ours through :func:`models.build_model`;
    the EGNN baseline, which is not a registered task model, from its class (``EGNN(**config)``)."""
    from invattn.models import EGNN, build_model

    return EGNN(**kwargs) if architecture == "egnn" else build_model("nbody", **kwargs)


def model_label(cfg) -> str:
    """``EGNN`` or the group (``E3``, ``SE3``, ``E2``..): how tables and sweeps name a training config's model."""
    if str(cfg.get("architecture") or "attention") == "egnn":
        return "EGNN"
    return str(cfg.model.get("group"))


@register_task
class NBodyTask:
    """Data, model construction, loss and evaluation for N-body training.

    With ``data.val_sims = k > 0`` the last ``k`` simulations of the training file are a
    validation split: training never sees them, and :meth:`evaluate` reports ``val_*`` metrics
    on them beside the ``test_*`` ones (choose learning rates and epochs on ``val_*`` only).
    """

    name = "nbody"
    config_name = "train_nbody"
    default_metric = "test_mse_x"
    report_columns = ("test_mse_x", "test_mse_v", "test_constant_velocity_mse_x")
    run_defining = ("architecture", "egnn", "train.velocity_loss_weight", "data.delta_frames",
                    "data.max_train_sims", "data.augment_rotations", "data.val_sims", "data.start_frame")
    # Checkpoints saved before these keys existed were trained with these values.
    added_later = {"architecture": "attention", "egnn.n_layers": 4, "egnn.hidden": 64,
                   "train.velocity_loss_weight": 1.0, "data.val_sims": 0}
    batch_type = NBodyBatch

    @classmethod
    def check_data(cls, cfg, groups: list[str] | None = None) -> None:
        """Both split files must exist (else how to simulate them) and hold trajectories of the
        dimension of the model's group (of each of ``groups``, a sweep's ``search.groups``)."""
        root = Path(cfg.data.dir)
        needed = [root / cfg.data.train_file, root / cfg.data.test_file]
        require_files(needed, "invattn simulate preset=paper out=", root)
        for group in groups if groups else [nbody_group(cfg)]:
            for path in needed:
                require_dim(path, None if group == "EGNN" else group)

    model_label = staticmethod(model_label)

    @classmethod
    def metric_units(cls, cfg) -> dict[str, str]:
        return {}  # simulation units throughout

    @classmethod
    def describe(cls, cfg, metrics: dict) -> str:
        return ""

    def __init__(self, cfg: DictConfig, dtype=torch.float32):
        data = cfg.data
        root = Path(data.dir)
        self.dtype = dtype
        self.seed = int(cfg.seed)
        self.batch_size = int(cfg.train.batch_size)
        self.eval_batch_size = int(cfg.train.eval_batch_size)
        self.augment = bool(data.augment_rotations)
        # Keys added after checkpoints were first saved: absent means the old behaviour.
        self.velocity_weight = float(cfg.train.get("velocity_loss_weight", 1.0))
        val_sims = int(data.get("val_sims", 0) or 0)
        start_frame = data.get("start_frame")
        if val_sims < 0 or self.velocity_weight < 0:
            raise ValueError(f"data.val_sims ({val_sims}) and train.velocity_loss_weight "
                             f"({self.velocity_weight}) must not be negative")
        for name in (data.train_file, data.test_file):
            require_dim(root / name, nbody_group(cfg))
        windows = dict(delta_frames=data.delta_frames, seed=self.seed, start_frame=start_frame)
        self.val_set = None
        if val_sims:  # the last val_sims simulations of the training file; at least one left to train
            self.val_set = NBodyWindows(root / data.train_file, train=False, sims=(-val_sims, None),
                                        **windows)
            if self.val_set.n_sims != val_sims or self.val_set.first_sim == 0:
                raise ValueError(f"data.val_sims={val_sims} must be smaller than the "
                                 f"{self.val_set.n_sims} simulations of {root / data.train_file}")
        self.train_set = NBodyWindows(root / data.train_file, train=True, max_sims=data.max_train_sims,
                                      sims=(0, -val_sims) if val_sims else None, **windows)
        self.test_set = NBodyWindows(root / data.test_file, train=False, max_sims=data.max_test_sims,
                                     **windows)
        self.architecture, self.model_kwargs = nbody_model_kwargs(cfg)

    @classmethod
    def model_for(cls, cfg, config: dict | None = None):
        """Ours or the EGNN (``architecture``); ``config``: a saved ``model.config`` instead of ``cfg``'s."""
        architecture, kwargs = nbody_model_kwargs(cfg)
        return build_nbody_model(architecture, kwargs if config is None else config)

    def build_model(self, config: dict | None = None):
        return build_nbody_model(self.architecture, self.model_kwargs if config is None else config)

    def n_train_batches(self) -> int:
        return -(-len(self.train_set) // self.batch_size)

    def train_batches(self, epoch: int, device):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        for batch in self.train_set.batches(epoch, self.batch_size, dtype=torch.float64):
            if self.augment:
                b, _, d = batch.positions.shape
                rot = random_rotations(b, gen, dim=d).unsqueeze(1)  # [B,1,d,d]
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
        mse_x = (dx - batch.delta_positions).pow(2).mean()
        if self.velocity_weight == 0:  # positions only (EGNN protocol)
            return mse_x
        mse_v = (dv - batch.delta_velocities).pow(2).mean()
        return (mse_x + self.velocity_weight * mse_v) / (1 + self.velocity_weight)

    @torch.no_grad()
    def evaluate(self, model, device) -> dict[str, float]:
        """Test-split (and validation-split, ``val_*``) MSEs of the model and the two baselines."""
        out = self._evaluate_split(model, device, self.test_set, "test")
        if self.val_set is not None:
            out.update(self._evaluate_split(model, device, self.val_set, "val"))
        return out

    def _evaluate_split(self, model, device, windows, prefix: str) -> dict[str, float]:
        sums = dict.fromkeys(["mse_x", "mse_v", "zero_change_mse_x", "zero_change_mse_v",
                              "constant_velocity_mse_x"], 0.0)
        count = 0
        horizon = windows.horizon_time
        for batch in windows.batches(0, self.eval_batch_size, dtype=torch.float64):
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
        out = {f"{prefix}_{k}": v / count for k, v in sums.items()}
        # Constant velocity keeps v, so its velocity error is the zero-change one.
        out[f"{prefix}_constant_velocity_mse_v"] = out[f"{prefix}_zero_change_mse_v"]
        return out

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
