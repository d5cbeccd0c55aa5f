"""Input checks shared by the task models: shapes and padding masks."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_shape", "prepare_mask", "centre_positions"]


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


def check_shape(name: str, tensor: Tensor, expected: tuple, hint: str = "") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``tensor.shape`` matches (``None`` = any size).

    ``hint`` (e.g. which group fixes the last dimension) is appended to the message.
    """
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        pattern = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} has shape {list(shape)}, expected {pattern}" + (f" ({hint})" if hint else ""))


def centre_positions(positions: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Positions minus each graph's centroid of real nodes, then cast to ``dtype``; 0 at padding.

    The centroid is subtracted in the precision the positions arrive in (pass float64 to a
    float32 model), so float32 results do not depend on where the system sits: at an offset of
    1e4, casting absolute positions to float32 first would round them by about 1e-3. Models use
    only differences ``x_i - x_j``, which the shift leaves unchanged.

    Shapes: ``positions [B, N, d]``, ``mask [B, N]`` bool -> ``[B, N, d]`` of ``dtype``.
    """
    keep = mask.unsqueeze(-1)
    positions = torch.where(keep, positions, 0.0)  # padded garbage (even NaN) must not leak
    count = mask.sum(1).clamp(min=1).to(positions.dtype)[:, None, None]
    # Detached: the models are translation invariant, so the centroid is a constant shift for
    # gradients too, and a body's gradient stays exactly what its own differences give.
    centroid = (positions.sum(1, keepdim=True) / count).detach()
    return torch.where(keep, positions - centroid, 0.0).to(dtype)
