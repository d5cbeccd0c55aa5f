"""Equivariant nonlinearities between attention layers.

:class:`GatedNonlinearity` (used by the models) scales each vector channel by a sigmoid gate
computed from invariants: the node's (layer-normalized) scalars and ``log(1 + |v_t|^2)`` of every
vector channel, and softly bounds the vectors' size by ``1 / sqrt(1 + mean_t |v_t|^2)``. Gates of
this kind are what e3nn's ``Gate`` and the NVIDIA SE(3)-Transformer use. Every factor is an
invariant, so the layer commutes with rotations and reflections, and every factor is a smooth
function of ``|v_t|^2``, so the output is smooth across ``v = 0`` with an input gain bounded by
``1 + |W| / 2`` (``W`` the gate's weights on the norm inputs); nothing divides by ``|v|``.

:class:`NormNonlinearity` (``(v / |v|) act(LayerNorm(|v|))``, the SE(3)-Transformer's NormSE3) is
kept for reference and comparison only. Its output direction is ``v / |v|``, which flips sign across
``v = 0``, and the LayerNorm gives a vanishing channel a non-zero norm from the other channels, so
its gain near ``v = 0`` is about ``1 / sqrt(eps)``: a vector that vanishes by symmetry (the centre
of a tetrahedral molecule) turns float32 rounding noise into O(1e-2) rotation errors.

Measurements that chose the gate (issue 11; ``benchmarks/nonlinearity.py --molecules 100
--epochs 5``, CPU, torch 2.13, one seed; "trained-looking" = LayerNorm/gate parameters moved off
their init by noise of 0.5, as training moves them):

=================================================  ==========  ==========
measurement                                        norm        gated
=================================================  ==========  ==========
float32 rotation error, paper-sized QM9Model SE3,
first 100 real QM9 sample molecules, normalized
units, worst molecule -- at init                   2.7e-06     7.2e-07
-- trained-looking (worst: methane, gdb 1)         4.3e-04     9.5e-07
max input gradient, paper-sized NBodyModel SE3,
5 collinear bodies (float64) -- at init            285         1.06
-- trained-looking                                 125         0.92
N-body demo data (1000 sims), 5 epochs, test
mse_x (constant-velocity baseline 0.0183)          0.0270      0.0072
-- test mse_v                                      0.125       0.093
=================================================  ==========  ==========

Median rotation errors are 1e-7 to 5e-7 for both, so the gate brings symmetric molecules to the
level of generic ones (``tests/test_numerics_models.py`` checks all 2000 sample molecules).
The gate adds ``(L + T + 1) T`` parameters per layer: 184,908 / 116,732 for the N-body models
(paper: 184K / 115K).

Neither is in the paper's equations; the paper's released code uses a norm-based layer.
"""
from __future__ import annotations

import torch
from torch import nn

from invattn.models.features import Features, FeatureShape
from invattn.models.groups import parse_group

__all__ = ["GatedNonlinearity", "NormNonlinearity"]


class GatedNonlinearity(nn.Module):
    """Smooth gated nonlinearity on :class:`~models.features.Features` (used between attention layers).

    Scalars: ``s' = SiLU(LayerNorm(s))``. Vectors: ``v'_t = v_t * sigmoid(a_t) / sqrt(1 + m)``
    with ``a = W [LayerNorm(s), log(1 + |v_1|^2), ..., log(1 + |v_T|^2)] + b`` and
    ``m = mean_t |v_t|^2``. Each vector channel is multiplied by an invariant, so the map is
    exactly equivariant under O(3); every factor is a smooth function of ``|v_t|^2``, so it is
    smooth at ``v = 0`` (where it is linear) and ``v / sqrt(1 + m)`` keeps vector sizes O(1)
    without ever dividing by a vanishing norm.

    Parameters
    ----------
    shape : FeatureShape
        Channels ``(T, L)``; ``T`` and ``L`` may be 0. Parameters: ``2 L`` (LayerNorm) plus
        ``(L + T + 1) T`` (gate).
    group : str or Group, optional
        Euclidean groups (default, any ``d``): as above. A Lorentz group (:mod:`models.groups`)
        has an indefinite ``q_t = <v_t, v_t>``, so the gate reads ``asinh(q_t)`` and the bound
        uses ``m = mean_t (sqrt(1 + q_t^2) - 1)`` (smooth, ``>= 0``, ``~|q_t|``): both invariant.

    Shapes
    ------
    ``forward(Features([..., T, d], [..., L])) -> Features([..., T, d], [..., L])``

    Examples
    --------
    >>> nl = GatedNonlinearity(FeatureShape(4, 8))
    >>> out = nl(Features(torch.zeros(2, 4, 3), torch.zeros(2, 8)))
    >>> out, bool(out.vectors.eq(0).all())
    (Features(vectors=[2, 4, 3], scalars=[2, 8]), True)
    """

    def __init__(self, shape: FeatureShape, group: str = "SE3"):
        super().__init__()
        self.shape = FeatureShape(*shape)
        self.group = parse_group(group)
        t, l = self.shape
        self.scalar_norm = nn.LayerNorm(l) if l else None
        self.gate = nn.Linear(l + t, t) if t else None
        self.act = nn.SiLU()

    def forward(self, features: Features) -> Features:
        vectors, scalars = features
        normed = self.scalar_norm(scalars) if self.scalar_norm is not None else scalars
        if self.gate is not None and self.group.euclidean:
            squared = vectors.pow(2).sum(-1)  # [..., T], smooth in v (unlike |v|)
            gate = torch.sigmoid(self.gate(torch.cat([normed, torch.log1p(squared)], -1)))
            scale = gate * torch.rsqrt(1.0 + squared.mean(-1, keepdim=True))
            vectors = vectors * scale.unsqueeze(-1)
        elif self.gate is not None:  # indefinite form: <v, v> may be negative
            squared = self.group.inner(vectors, vectors)
            gate = torch.sigmoid(self.gate(torch.cat([normed, torch.asinh(squared)], -1)))
            size = (torch.sqrt(1.0 + squared.pow(2)) - 1.0).mean(-1, keepdim=True)
            scale = gate * torch.rsqrt(1.0 + size)
            vectors = vectors * scale.unsqueeze(-1)
        return Features(vectors, self.act(normed) if self.scalar_norm is not None else scalars)

    def extra_repr(self) -> str:
        return f"{self.shape}"


class NormNonlinearity(nn.Module):
    """Norm-based nonlinearity (reference only; not smooth at ``v = 0``, see the module docstring).

    A vector ``v`` is replaced by ``(v / |v|) * act(LayerNorm(|v|))``; scalars get
    ``act(LayerNorm(s))``.

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
