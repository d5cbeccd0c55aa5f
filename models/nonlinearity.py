"""Norm-based nonlinearity between attention layers (as in the SE(3)-Transformer's NormSE3).

A vector ``v`` is replaced by ``(v / |v|) * act(LayerNorm(|v|))``: the direction is kept and only
the (invariant) norm goes through a nonlinearity, so the map commutes with every rotation and
reflection. Scalars get ``act(LayerNorm(s))``. Not in the paper's equations; the paper's
released code uses this kind of layer between attention blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from models.features import Features, FeatureShape

__all__ = ["NormNonlinearity"]


class NormNonlinearity(nn.Module):
    """Equivariant nonlinearity on :class:`~models.features.Features`.

    Parameters
    ----------
    shape : FeatureShape
        Channels ``(T, L)``; ``T`` and ``L`` may be 0.
    eps : float
        Added inside the square root of the norm: ``|v| = sqrt(v.v + eps)``, so a zero vector
        has a finite gradient (plain ``sqrt`` has an infinite derivative at 0) and maps to 0.

    Shapes
    ------
    ``forward(Features([..., T, 3], [..., L])) -> Features([..., T, 3], [..., L])``

    Examples
    --------
    >>> nl = NormNonlinearity(FeatureShape(4, 8))
    >>> nl(Features(torch.zeros(2, 4, 3), torch.zeros(2, 8)))
    Features(vectors=[2, 4, 3], scalars=[2, 8])
    """

    def __init__(self, shape: FeatureShape, eps: float = 1e-6):
        super().__init__()
        self.shape = FeatureShape(*shape)
        self.eps = eps
        self.vector_norm = nn.LayerNorm(self.shape.vectors) if self.shape.vectors else None
        self.scalar_norm = nn.LayerNorm(self.shape.scalars) if self.shape.scalars else None
        self.act = nn.SiLU()

    def forward(self, features: Features) -> Features:
        vectors, scalars = features
        if self.vector_norm is not None:
            norms = torch.sqrt(vectors.pow(2).sum(-1) + self.eps)  # [..., T], >= sqrt(eps)
            gain = self.act(self.vector_norm(norms)) / norms
            vectors = vectors * gain.unsqueeze(-1)
        if self.scalar_norm is not None:
            scalars = self.act(self.scalar_norm(scalars))
        return Features(vectors, scalars)

    def extra_repr(self) -> str:
        return f"{self.shape}, eps={self.eps}"
