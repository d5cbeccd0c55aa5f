"""The sweep's search space: a grid over ``optim.lr`` and ``model.subdeterminants``.

``search.lr`` and ``search.subdeterminants`` are lists (grid search); ``search.lr_loguniform``
``[low, high]`` instead samples the learning rate log-uniformly ``num_samples`` times;
``search.seeds`` repeats every point with different training seeds; ``search.groups`` adds a
grid over ``model.group`` (``EGNN`` there means the baseline, ``architecture=egnn``), and
``search.lr_by_group`` (``{E3: lr, SE3: lr, EGNN: lr}``) then fixes each group's learning rate
instead of the ``lr`` grid (the final runs of a reproduction).
"""
from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf
from ray import tune

from invattn.checks import is_number

__all__ = ["param_space", "apply_trial_params", "check_space_against_model"]


def _k(value):
    """A ``search.subdeterminants`` entry in its config form, ``"all"`` or ``k`` (YAML may hand
    us "8" as a string), parsed by the model's own :class:`~models.sampling.Sampling`."""
    from invattn.models.sampling import Sampling

    return Sampling.parse(value, "search.subdeterminants entries").config


def _number(key: str, value, kind):
    """``kind(value)`` for a numeric entry of ``key``; ValueError naming the key otherwise."""
    if isinstance(value, str):  # e.g. "1e-3" from a YAML file
        try:
            value = float(value)
        except ValueError:
            pass
    ok = is_number(value)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        what = "integers" if kind is int else "numbers"
        raise ValueError(f"{key} entries must be {what}, got {value!r}")
    return kind(value)


def _euclidean_group(name: str) -> bool:
    """Whether ``name`` is an E(d)/SE(d) group in its canonical spelling (N-body data are Euclidean)."""
    from invattn.models.groups import parse_group

    try:
        group = parse_group(name)
    except ValueError:
        return False
    return group.euclidean and group == name


def param_space(search: DictConfig) -> dict:
    """Ray Tune ``param_space`` from the ``search`` section of the sweep config.

    Raises
    ------
    ValueError
        Empty lists, non-positive learning rates or a malformed ``lr_loguniform``.
    """
    for key in ("lr", "subdeterminants", "seeds", "groups"):
        value = search.get(key)
        if value is not None and not isinstance(value, ListConfig):
            raise ValueError(f"search.{key} must be a list, e.g. search.{key}=[{value}]")
    space: dict = {}
    groups = [str(g) for g in (search.get("groups") or [])]
    if groups:
        bad = sorted(g for g in groups if g != "EGNN" and not _euclidean_group(g))
        if bad:
            raise ValueError(f"search.groups entries must be E3, SE3 (E2, SE2 for 2D data, E<d>/SE<d>) "
                             f"or EGNN (the baseline), got {bad}; the paper's 3D comparison is E3, SE3 or EGNN")
        space["group"] = tune.grid_search(groups)
    lr_by_group = search.get("lr_by_group")
    if lr_by_group:
        lr_by_group = OmegaConf.to_container(lr_by_group)
        if not all(isinstance(v, (int, float)) and v > 0 for v in lr_by_group.values()):
            raise ValueError(f"search.lr_by_group must map groups to positive rates, got {lr_by_group} "
                             f"(YAML needs a space after each colon: {{E3: 1e-3, SE3: 3e-4}})")
        lr_by_group = {str(k): float(v) for k, v in lr_by_group.items()}
        missing = sorted(set(groups) - set(lr_by_group))
        if not groups or missing:
            raise ValueError(f"search.lr_by_group needs search.groups and a rate for each of them "
                             f"(missing {missing})")
        space["lr_by_group"] = lr_by_group
    elif search.get("lr_loguniform"):
        low, high = (_number("search.lr_loguniform", x, float) for x in search.lr_loguniform)
        if not 0 < low < high:
            raise ValueError(f"search.lr_loguniform must be [low, high] with 0 < low < high, got {list(search.lr_loguniform)}")
        space["lr"] = tune.loguniform(low, high)
    else:
        lrs = [_number("search.lr", x, float) for x in search.lr]
        if not lrs or min(lrs) <= 0:
            raise ValueError(f"search.lr must be a non-empty list of positive numbers, got {list(search.lr)}")
        space["lr"] = tune.grid_search(lrs)
    ks = [_k(k) for k in OmegaConf.to_container(search.subdeterminants)]
    if not ks:
        raise ValueError("search.subdeterminants must list at least one value ('all' or k)")
    space["subdeterminants"] = tune.grid_search(ks)
    seeds = [_number("search.seeds", s, int) for s in search.seeds]
    if len(seeds) > 1:
        space["seed"] = tune.grid_search(seeds)
    elif seeds:
        space["seed"] = seeds[0]
    return space


def check_space_against_model(train_cfg: DictConfig, space: dict) -> None:
    """Build the model of every (group, subdeterminants) point of ``space`` on the CPU.

    Run before Ray starts: a value the model refuses (``search.subdeterminants=[all,99]`` with
    10 triples) would otherwise make every such trial fail after the cluster is up.

    Raises
    ------
    ValueError
        Names the search key, the value and the model's reason.
    """
    from invattn.pipeline.training.task import task_class

    task = task_class(str(train_cfg.task))

    def values(key):
        value = space.get(key)
        if isinstance(value, dict) and "grid_search" in value:
            return list(value["grid_search"])
        return [value] if value is not None else [None]

    for group in values("group"):
        for k in values("subdeterminants"):
            params = {"lr": 1.0, "subdeterminants": k, **({"group": group} if group else {})}
            params.pop("lr_by_group", None)
            cfg = apply_trial_params(train_cfg, params)
            try:
                task.model_for(cfg)  # as training builds it (N-body: ours or the EGNN baseline)
            except (TypeError, ValueError) as exc:
                where = f"search.subdeterminants={k}" + (f" with model.group={group}" if group else "")
                raise ValueError(f"{where} is not a valid model: {exc}") from None


def apply_trial_params(train_cfg: DictConfig, params: dict) -> DictConfig:
    """A copy of the training config with the trial's sampled values filled in."""
    cfg = train_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    group = str(params["group"]) if "group" in params else str(cfg.model.get("group"))
    if group == "EGNN":  # the baseline: architecture=egnn (built from egnn.*, not model.*)
        cfg.architecture = "egnn"
    elif "group" in params:
        cfg.model.group = group
    lr = params["lr_by_group"][group] if "lr_by_group" in params else params["lr"]
    cfg.optim.lr = float(lr)
    cfg.model.subdeterminants = params["subdeterminants"]
    if "seed" in params:
        cfg.seed = int(params["seed"])
    OmegaConf.set_struct(cfg, True)
    return cfg
