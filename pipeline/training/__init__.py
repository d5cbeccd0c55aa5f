"""Training runtime: tasks (:mod:`.task`), the run checkpoint (:mod:`.run_checkpoint`),
``train``/``fit`` (:mod:`.loop`) and their callbacks (:mod:`.callbacks`), metrics logs.

This package builds models through ``models.build_model`` and rebuilds them from their
``model.config`` (the EGNN baseline through its constructor); it never reaches into model internals.
"""
from invattn.pipeline.training.loop import fit, train
from invattn.pipeline.training.run_checkpoint import checkpoint_path, count_parameters
from invattn.pipeline.training.task import make_task

__all__ = ["train", "fit", "make_task", "checkpoint_path", "count_parameters"]
