"""Uniformly random rotations (3D by default, any dimension) for data augmentation."""
from __future__ import annotations

import torch

__all__ = ["random_rotations"]


def random_rotations(n: int, generator: torch.Generator, dtype=torch.float64, dim: int = 3) -> torch.Tensor:
    """``n`` Haar-random rotation matrices ``[n, dim, dim]`` (det +1), from ``generator``.

    QR of a Gaussian matrix with the signs of R's diagonal folded into Q gives Haar-random
    orthogonal matrices; flipping one column where det = -1 keeps them in SO(dim).
    """
    a = torch.randn(n, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    flip = torch.linalg.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q.to(dtype)
