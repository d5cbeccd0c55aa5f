"""Set models for particle four-momenta: the Lorentz-equivariant attention network and a plain
DeepSets baseline (issue 12, docs/lorentz.md).

:class:`FourMomentumModel` is the attention stack of the N-body/QM9 models with the Lorentz group
(:mod:`models.groups`): each particle is a node carrying its four-momentum ``p_j`` as a vector
and its labels as scalars; the key/value maps see ``p_i - p_j`` as the "relative position" (its
scalar products with ``p_j`` give ``<p_i, p_j>``). A node-wise Phi reads invariant scalars out,
summed over the particles, and an MLP maps them to the prediction: invariant under every element
of the group by construction (SO+(1,3): boosts and rotations; O(1,3): also parity and time
reversal). :class:`DeepSetsBaseline` reads the raw components instead (no symmetry).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from invattn.checks import check_int
from invattn.models.backbone import EquivariantTransformer, validate_sizes
from invattn.models.equivariant_map import EquivariantMap
from invattn.models.features import Features, FeatureShape
from invattn.models.groups import parse_group
from invattn.models.inputs import check_shape, prepare_mask

__all__ = ["FourMomentumModel", "DeepSetsBaseline"]


class FourMomentumModel(nn.Module):
    """Lorentz-invariant regression on a set of four-momenta (one number per set).

    Parameters
    ----------
    labels : int
        Scalar labels per particle (e.g. 1: "is a decay product").
    group : str
        ``"SO+(1,3)"`` (default) or ``"O(1,3)"``; any group of :func:`~models.groups.parse_group`
        whose dimension is 4 works (e.g. ``"E4"``, as a check of what the Minkowski form buys).
    n_layers, vectors, scalars, heads, query_vectors, query_scalars, mlp_hidden :
        As in :class:`~models.nbody.NBodyModel`.
    readout : int
        Invariant scalars per particle before the sum.

    Shapes
    ------
    ``forward(momenta [B, N, 4] (E, px, py, pz), labels [B, N, labels], mask [B, N] bool | None)
    -> [B]``; padded particles are ignored.

    Examples
    --------
    >>> model = FourMomentumModel(labels=1)
    >>> model(torch.randn(2, 5, 4), torch.ones(2, 5, 1)).shape
    torch.Size([2])
    """

    def __init__(self, labels: int = 1, group: str = "SO+(1,3)", n_layers: int = 2, vectors: int = 4,
                 scalars: int = 16, heads: int = 2, query_vectors: int = 4, query_scalars: int = 16,
                 mlp_hidden: int = 32, readout: int = 32):
        super().__init__()
        self.group = parse_group(group)
        if self.group.dim != 4:
            raise ValueError(f"four-momenta need a group acting on 4-vectors, got {group!r} ({self.group.dim}D)")
        validate_sizes(n_layers=n_layers, vectors=vectors, scalars=scalars, heads=heads,
                       query_vectors=query_vectors, query_scalars=query_scalars, mlp_hidden=mlp_hidden,
                       readout=readout)
        self.labels = check_int("labels", labels, 0)
        hidden = FeatureShape(vectors, scalars)
        self.backbone = EquivariantTransformer(
            in_shape=FeatureShape(1, labels), hidden_shape=hidden, edge_dim=0, n_layers=n_layers, heads=heads,
            query_shape=FeatureShape(query_vectors, query_scalars), mlp_hidden=mlp_hidden, group=self.group)
        self.readout = EquivariantMap(hidden, FeatureShape(0, readout), mlp_hidden, self.group)
        self.head = nn.Sequential(nn.Linear(readout, readout), nn.ReLU(), nn.Linear(readout, 1))

    def forward(self, momenta: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        check_shape("momenta", momenta, (None, None, 4))
        b, n = momenta.shape[:2]
        check_shape("labels", labels, (b, n, self.labels))
        mask = prepare_mask(mask, momenta)
        dtype = next(self.parameters()).dtype
        p = torch.where(mask[..., None], momenta.to(dtype), 0.0)
        s = torch.where(mask[..., None], labels.to(dtype), 0.0)
        relative = p.unsqueeze(1) - p.unsqueeze(2)  # [b, j, i] = p_i - p_j
        edges = p.new_zeros(b, n, n, 0)
        hidden = self.backbone(Features(p.unsqueeze(-2), s), relative, edges, mask)
        per_particle = torch.where(mask[..., None], self.readout(hidden).scalars, 0.0)
        return self.head(per_particle.sum(1)).squeeze(-1)


class DeepSetsBaseline(nn.Module):
    """``rho(sum_j phi([p_j, labels_j]))`` on the raw components (Zaheer et al. 2017): permutation
    invariant, nothing more.

    Shapes: as :class:`FourMomentumModel`.
    """

    def __init__(self, labels: int = 1, hidden: int = 64):
        super().__init__()
        self.labels = labels
        self.phi = nn.Sequential(nn.Linear(4 + labels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, momenta: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        check_shape("momenta", momenta, (None, None, 4))
        mask = prepare_mask(mask, momenta)
        dtype = next(self.parameters()).dtype
        x = torch.cat([momenta, labels], -1).to(dtype)
        per_particle = torch.where(mask[..., None], self.phi(x), 0.0)
        return self.rho(per_particle.sum(1)).squeeze(-1)
