"""The sweep's search space: a grid over ``optim.lr`` and ``model.subdeterminants``.

``search.lr`` and ``search.subdeterminants`` are lists (grid search); ``search.lr_loguniform``
``[low, high]`` instead samples the learning rate log-uniformly ``num_samples`` times;
``search.seeds`` repeats every point with different training seeds.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from ray import tune

__all__ = ["param_space", "apply_trial_params"]


def _k(value):
    """``"all"`` or a positive int (YAML may hand us "8" as a string)."""
    if isinstance(value, str) and value != "all":
        if not value.isdigit():
            raise ValueError(f"search.subdeterminants entries must be 'all' or positive ints, got {value!r}")
        return int(value)
    return value


def param_space(search: DictConfig) -> dict:
    """Ray Tune ``param_space`` from the ``search`` section of the sweep config.

    Raises
    ------
    ValueError
        Empty lists, non-positive learning rates or a malformed ``lr_loguniform``.
    """
    space: dict = {}
    if search.get("lr_loguniform"):
        low, high = (float(x) for x in search.lr_loguniform)
        if not 0 < low < high:
            raise ValueError(f"search.lr_loguniform must be [low, high] with 0 < low < high, got {list(search.lr_loguniform)}")
        space["lr"] = tune.loguniform(low, high)
    else:
        lrs = [float(x) for x in search.lr]
        if not lrs or min(lrs) <= 0:
            raise ValueError(f"search.lr must be a non-empty list of positive numbers, got {list(search.lr)}")
        space["lr"] = tune.grid_search(lrs)
    ks = [_k(k) for k in OmegaConf.to_container(search.subdeterminants)]
    if not ks:
        raise ValueError("search.subdeterminants must list at least one value ('all' or k)")
    space["subdeterminants"] = tune.grid_search(ks)
    seeds = [int(s) for s in search.seeds]
    if len(seeds) > 1:
        space["seed"] = tune.grid_search(seeds)
    elif seeds:
        space["seed"] = seeds[0]
    return space


def apply_trial_params(train_cfg: DictConfig, params: dict) -> DictConfig:
    """A copy of the training config with the trial's sampled values filled in."""
    cfg = train_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.optim.lr = float(params["lr"])
    cfg.model.subdeterminants = params["subdeterminants"]
    if "seed" in params:
        cfg.seed = int(params["seed"])
    OmegaConf.set_struct(cfg, True)
    return cfg
