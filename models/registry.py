"""Build a model from a task name and plain keyword arguments (what a config file holds).

Every registered model stores its constructor arguments in ``model.config`` (a dict of plain
Python values), so a training runtime can save it with a checkpoint and rebuild the model with
``build_model(task, **config)``.
"""
from __future__ import annotations

import difflib
import inspect

from torch import nn

from invattn.models.sampling import Sampling

__all__ = ["MODELS", "MODEL_FORMAT", "MODEL_FORMATS", "register_model", "build_model", "constructor_config"]

# Version of the models' parameter layout, saved with every checkpoint: a model of one format
# cannot load the weights of another. Bump it (and describe it here) whenever that changes.
MODEL_FORMATS = {
    1: "norm nonlinearity between attention layers; before commit f846133",
    2: "gated nonlinearity between attention layers; issue 11, commit f846133",
}
MODEL_FORMAT = max(MODEL_FORMATS)

MODELS: dict[str, type[nn.Module]] = {}


def register_model(task: str):
    """Class decorator: make ``build_model(task, ...)`` construct this class."""

    def decorate(cls):
        MODELS[task] = cls
        cls.task = task
        return cls

    return decorate


def constructor_config(cls, arguments: dict) -> dict:
    """The constructor arguments of ``cls`` picked out of ``arguments`` (e.g. ``locals()``).

    An argument left at a default of ``None`` (an option switched off, such as ``cutoff``) is
    omitted, so every value is a plain int, float or str and configs saved before the option
    existed compare equal.
    """
    parameters = inspect.signature(cls.__init__).parameters
    # A Sampling given in Python is recorded in its config form ("all" or k).
    return {name: arguments[name].config if isinstance(arguments[name], Sampling) else arguments[name]
            for name, p in parameters.items()
            if name != "self" and not (arguments[name] is None and p.default is None)}


def build_model(task: str, **kwargs) -> nn.Module:
    """Construct the model registered for ``task`` (``"nbody"`` or ``"qm9"``).

    Parameters
    ----------
    task : str
        Registered task name.
    **kwargs
        Constructor arguments (plain ints, floats, strings), e.g. from ``model.config``.

    Raises
    ------
    ValueError
        Unknown task, or an unknown keyword (the message names it and suggests close matches).

    Examples
    --------
    >>> model = build_model("nbody", group="E3")
    >>> build_model("nbody", **model.config).config == model.config
    True
    """
    if task not in MODELS:
        raise ValueError(f"unknown task {task!r}; registered models: {sorted(MODELS)}")
    cls = MODELS[task]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown option {key!r} for the {task} model{hint}; "
                             f"valid options: {', '.join(valid)}")
    return cls(**kwargs)
