"""Input checks shared by the task models: shapes and padding masks."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_shape", "prepare_mask"]


def prepare_mask(mask: Tensor | None, reference: Tensor) -> Tensor:
    """``mask`` as a bool ``[B, N]`` on ``reference``'s device (all True when ``None``).

    Raises
    ------
    ValueError
        If the mask's shape is not ``reference.shape[:2]``.
    """
    shape = reference.shape[:2]
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=reference.device)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)} ([B, N])")
    return mask.to(device=reference.device, dtype=torch.bool)


def check_shape(name: str, tensor: Tensor, expected: tuple) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``tensor.shape`` matches (``None`` = any size)."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        pattern = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} has shape {list(shape)}, expected {pattern}")
