"""Training runtime: task objects, the loop, checkpoints and metrics logs.

This package builds models through their public constructors only (``models.NBodyModel``,
``models.QM9Model``); it never reaches into model internals.
"""
from invattn.pipeline.training.loop import checkpoint_path, count_parameters, make_task, train

__all__ = ["train", "make_task", "checkpoint_path", "count_parameters"]
