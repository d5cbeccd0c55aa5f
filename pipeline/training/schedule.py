"""Learning-rate schedules as a per-epoch multiplier (warmup, then cosine / step / constant)."""
from __future__ import annotations

import math

__all__ = ["lr_factor", "SCHEDULES"]

SCHEDULES = ("constant", "cosine", "step")


def lr_factor(epoch: int, *, epochs: int, schedule: str, warmup_epochs: int = 0,
              min_factor: float = 0.0, step_epochs: int = 100, step_gamma: float = 0.5) -> float:
    """Multiplier of the base learning rate for 0-based ``epoch``.

    Raises
    ------
    ValueError
        Unknown ``schedule`` (names the allowed ones).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r} is not one of {SCHEDULES}")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return step_gamma ** ((epoch - warmup_epochs) // max(1, step_epochs))
    span = max(1, epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
