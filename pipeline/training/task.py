"""The ``Task`` protocol and the task registry: everything the pipeline knows about a task.

A task (``task=nbody``, ``task=qm9``) is one class, decorated with :func:`register_task`, in a
module named ``pipeline/training/<name>_task.py``: :func:`task_class` imports every such module
the first time it is asked, so adding a task touches one file (plus its
``configs/train_<name>.yaml``). The class carries, as class attributes, what the command line,
the sweep and the run checkpoint read without building the task (no data is loaded):

=====================  =====================================================================
``name``               the ``task=`` value
``config_name``        its training config, ``configs/<config_name>.yaml``
``default_metric``     the metric a sweep ranks trials by unless told otherwise
``report_columns``     the metrics of a sweep's results table
``run_defining``       config keys that define a run: resume refuses to change them
``added_later``        run-defining keys newer than some checkpoints: ``{key: value they had}``
``batch_type``         the type :meth:`Task.train_batches` yields
=====================  =====================================================================

and, through classmethods, :meth:`Task.check_data` (missing data, and how to make it),
:meth:`Task.model_label` (how tables name the model), :meth:`Task.metric_units` and
:meth:`Task.describe` (how metrics are printed). An instance (built from a training
config, loading the data) builds the model through :func:`models.build_model`, yields batches,
computes the loss and the evaluation metrics, and saves its own state in the run checkpoint.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar, Iterator, Protocol, runtime_checkable

__all__ = ["Task", "TASKS", "COMMON_RUN_DEFINING", "register_task", "task_class", "task_names",
           "make_task", "require_files"]

# Run-defining keys of every task; a task adds its own in ``run_defining``.
COMMON_RUN_DEFINING = ("task", "seed", "model", "optim", "train.epochs", "train.batch_size")


@runtime_checkable
class Task(Protocol):
    """What the training runtime, ``invattn evaluate`` and the sweep need of a task."""

    name: ClassVar[str]
    config_name: ClassVar[str]
    default_metric: ClassVar[str]
    report_columns: ClassVar[tuple[str, ...]]
    run_defining: ClassVar[tuple[str, ...]]
    added_later: ClassVar[dict[str, Any]]
    batch_type: ClassVar[type]

    @classmethod
    def check_data(cls, cfg, groups: list[str] | None = None) -> None:
        """Raise ``FileNotFoundError`` (saying how to make them) when ``cfg``'s data files are
        missing, ``ValueError`` when they do not fit the model (of each of ``groups``, the model
        groups a sweep searches; ``None``: the config's own)."""

    @classmethod
    def model_label(cls, cfg) -> str:
        """How result tables name the model of the training config ``cfg`` (``SE3``, ``EGNN``...)."""

    @classmethod
    def model_for(cls, cfg, config: dict | None = None):
        """The model of training config ``cfg`` (via :func:`models.build_model`), without loading
        data: training builds it so, and a sweep checks every point of its grid before Ray starts.
        ``config``: a saved ``model.config`` to rebuild instead.

        Raises
        ------
        ValueError, TypeError
            The model refuses a setting (the message names it).
        """

    def build_model(self, config: dict | None = None):
        """``model_for`` of this task's config."""

    def n_train_batches(self) -> int: ...

    def train_batches(self, epoch: int, device) -> Iterator[Any]:
        """The training batches of ``epoch`` (a fixed order per ``(seed, epoch)``), on ``device``."""

    def loss(self, model, batch): ...

    def evaluate(self, model, device) -> dict[str, float]: ...

    @classmethod
    def metric_units(cls, cfg) -> dict[str, str]:
        """Unit of each metric that has one (printed beside it; ``{}``: none has)."""

    @classmethod
    def describe(cls, cfg, metrics: dict) -> str:
        """One human line about ``metrics`` (empty when there is nothing to add to the JSON)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


TASKS: dict[str, type] = {}
_REQUIRED = ("config_name", "default_metric", "report_columns", "run_defining", "added_later",
             "batch_type")


def register_task(cls):
    """Class decorator: make ``task=<cls.name>`` train, evaluate and sweep with ``cls``.

    Raises
    ------
    TypeError
        A class attribute of the protocol is missing (the message names it).
    """
    missing = [a for a in ("name", *_REQUIRED) if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"task class {cls.__qualname__} lacks {', '.join(missing)}")
    TASKS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import the built-in task modules (``pipeline/training/*_task.py``) once."""
    if getattr(_discover, "done", False):
        return
    package = importlib.import_module("invattn.pipeline.training")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_task"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _discover.done = True


def task_names() -> list[str]:
    """The registered ``task=`` values, sorted."""
    _discover()
    return sorted(TASKS)


def task_class(name: str) -> type:
    """The registered class of ``task=name``.

    Raises
    ------
    ValueError
        No such task (the message lists the registered ones).
    """
    _discover()
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


def make_task(cfg):
    """The task object of a training config (``cfg.task``); loads its data."""
    return task_class(str(cfg.task))(cfg)


def require_files(paths: list[Path], how: str, root: Path) -> None:
    """``FileNotFoundError`` naming the missing ``paths`` and the command (``how`` + ``root``) that makes them."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"training data missing: {', '.join(missing)} (make it with `{how}{root}`)")
