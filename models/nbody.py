"""N-body model: predicts each body's displacement and velocity change (paper section 3, Table 1).

Inputs per body: velocity (a vector feature) and charge (a scalar); per pair: the product of
charges ``q_i q_j`` (an edge scalar; the squared distance is already in the key/value Gram
matrix through ``x_i - x_j``). Positions enter only as differences ``x_i - x_j``, so outputs are
translation invariant; they rotate with the input (and reflect too for ``group="E3"``). Any
dimension works with the matching group (``"E2"``/``"SE2"`` for 2D data, ``"E4"``..). Positions
are centred per system before any cast to the model's dtype, so float32 results do not depend on
where the system sits.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from invattn.models.backbone import EquivariantTransformer, validate_sampling, validate_sizes
from invattn.models.equivariant_map import EquivariantMap
from invattn.models.groups import parse_group
from invattn.models.features import Features, FeatureShape
from invattn.models.graph import check_cutoff, radius_graph_dense
from invattn.models.inputs import centre_positions, check_shape, prepare_mask
from invattn.models.registry import constructor_config, register_model
from invattn.models.sparse_attention import edge_geometry
from invattn.models.sparse_backbone import SparseEquivariantTransformer

__all__ = ["NBodyModel"]


@register_model("nbody")
class NBodyModel(nn.Module):
    """Equivariant attention network for charged N-body dynamics (paper section 3, Table 1).

    Parameters
    ----------
    group : str
        ``"SE3"``: invariants include subdeterminants, Phi also combines cross products.
        ``"E3"``: Gram matrix only (also reflection-equivariant). ``"E2"``/``"SE2"`` (2D data),
        ``"E<d>"``/``"SE<d>"`` (``d``-D data); the Lorentz groups are accepted too (four-vectors)
        but only without ``cutoff`` (a Euclidean radius is not Lorentz invariant).
    n_layers : int
        Attention layers (paper: 4).
    vectors, scalars : int
        Hidden vector channels ``T`` and scalar channels ``L`` per body.
    heads : int
        Attention heads; divides ``vectors``, ``scalars``, ``query_vectors``, ``query_scalars``.
    query_vectors, query_scalars : int
        Query/key channels per layer (flattened dim ``3 * query_vectors + query_scalars``).
    mlp_hidden : int
        Width of every Phi's MLP ``g``.
    subdeterminants, cross_products : "all" or int (or a :class:`~models.sampling.Sampling`)
        Keep all, or a fixed random subset of ``k`` triples / pairs in every Phi (a map with at most
        ``k`` keeps all); ``1 <= k <= C(vectors + 1, 3)`` resp. ``C(vectors + 1, 2)`` (``d``-D: ``d``
        and ``d - 1`` in place of 3 and 2).  Parsed and checked once here, then passed unchanged
        to every map.
    sampling_seed : int
        Seed of those subsets; they are buffers, so a loaded checkpoint brings its own.
    cutoff : float or None
        ``None`` (default): every body attends to every body (dense, ``O(N^2)``). A number (in
        the units of the positions): attention runs over the radius graph of that cutoff
        (:mod:`models.graph`), with each pair's softmax weight scaled by a switching function
        that is 1 below ``cutoff_inner`` and falls smoothly to 0 at ``cutoff``. Same parameters
        either way, so a checkpoint of one path loads into the other.
    cutoff_inner : float or None
        Where the switching starts, in ``[0, cutoff)``; ``None`` = ``0.75 * cutoff``.

    The defaults (4 layers, ``T = 4`` vector and ``L = 24`` scalar channels, 4 heads, queries of
    8 vectors + 24 scalars, MLP width 112) give 184,908 parameters for SE(3) and 116,732 for
    E(3), the sizes of the paper's Table 1 (184K and 115K). Both variants share the
    architecture; E(3) has fewer parameters only because it drops the subdeterminant inputs and
    the cross-product coefficients, as in the paper. A small ``T`` is what makes the two counts
    land on the paper's ratio (1.6): the SE(3) extras grow like ``T^3``.

    Shapes
    ------
    ``forward(positions [B, N, d], velocities [B, N, d], charges [B, N], mask [B, N] bool | None)
    -> (delta_positions [B, N, d], delta_velocities [B, N, d])``; zero for padded bodies; ``d`` is
    the group's dimension (3 for E3/SE3).

    Examples
    --------
    >>> model = NBodyModel(group="E3")
    >>> dx, dv = model(torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.ones(2, 5))
    >>> dx.shape, dv.shape
    (torch.Size([2, 5, 3]), torch.Size([2, 5, 3]))
    """

    def __init__(self, group: str = "SE3", n_layers: int = 4, vectors: int = 4, scalars: int = 24,
                 heads: int = 4, query_vectors: int = 8, query_scalars: int = 24, mlp_hidden: int = 112,
                 subdeterminants: int | str = "all", cross_products: int | str = "all",
                 sampling_seed: int = 0, cutoff: float | None = None, cutoff_inner: float | None = None):
        super().__init__()
        self.config = constructor_config(NBodyModel, locals())
        self.group = parse_group(group)
        self.cutoff = check_cutoff(cutoff, cutoff_inner)  # None or (cutoff, inner)
        if self.cutoff is not None and not self.group.euclidean:
            raise ValueError(f"cutoff needs a Euclidean group: a radius is not invariant under "
                             f"{self.group}; use cutoff=None")
        validate_sizes(n_layers=n_layers, vectors=vectors, scalars=scalars, heads=heads,
                       query_vectors=query_vectors, query_scalars=query_scalars,
                       mlp_hidden=mlp_hidden)
        d = self.group.dim
        subdeterminants, cross_products = validate_sampling(subdeterminants, cross_products, vectors, d)
        generator = torch.Generator().manual_seed(int(sampling_seed))
        hidden = FeatureShape(vectors, scalars)
        stack = EquivariantTransformer if self.cutoff is None else SparseEquivariantTransformer
        self.backbone = stack(
            in_shape=FeatureShape(1, 1), hidden_shape=hidden, edge_dim=1, n_layers=n_layers,
            heads=heads, query_shape=FeatureShape(query_vectors, query_scalars),
            mlp_hidden=mlp_hidden, group=self.group, subdeterminants=subdeterminants,
            cross_products=cross_products, generator=generator)
        # Node-wise Phi to the two output vectors (displacement, velocity change).
        self.head = EquivariantMap(hidden, FeatureShape(2, 0), mlp_hidden, self.group,
                                   subdeterminants, cross_products, generator)

    def forward(self, positions: Tensor, velocities: Tensor, charges: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Predict ``(delta_positions, delta_velocities)``, each ``[B, N, d]``.

        Raises
        ------
        ValueError
            On mismatched shapes.
        """
        d = self.group.dim
        hint = f"group {self.group} acts on {d}D vectors; 2D data needs group E2 or SE2"
        check_shape("positions", positions, (None, None, d), hint)
        b, n = positions.shape[:2]
        check_shape("velocities", velocities, (b, n, d), hint)
        check_shape("charges", charges, (b, n))
        mask = prepare_mask(mask, positions)
        # torch.where, not a product: garbage (even NaN) in padded bodies must not leak.
        dtype = next(self.parameters()).dtype
        positions = centre_positions(positions, mask, dtype)  # centred before any float32 cast
        velocities = torch.where(mask[..., None], velocities.to(dtype), 0.0)
        charges = torch.where(mask, charges.to(dtype), 0.0)
        if self.cutoff is not None:
            return self._forward_sparse(positions, velocities, charges, mask)
        relative = positions.unsqueeze(1) - positions.unsqueeze(2)  # [b, j, i] = x_i - x_j
        edges = (charges.unsqueeze(2) * charges.unsqueeze(1)).unsqueeze(-1)  # q_i q_j
        nodes = Features(velocities.unsqueeze(-2), charges.unsqueeze(-1))
        hidden = self.backbone(nodes, relative, edges, mask)
        out = self.head(hidden).masked(mask).vectors
        return out[..., 0, :], out[..., 1, :]

    def _forward_sparse(self, positions: Tensor, velocities: Tensor, charges: Tensor,
                        mask: Tensor) -> tuple[Tensor, Tensor]:
        """The cutoff path: flatten the real bodies, attend over the radius graph, pad back."""
        cutoff, inner = self.cutoff
        edge_index, _ = radius_graph_dense(positions, mask, cutoff)
        source, target = edge_index
        x, q = positions[mask], charges[mask]  # [n, d], [n]
        relative, weights = edge_geometry(x, edge_index, cutoff, inner)  # x_i - x_j [E, d], [E]
        edges = (q.index_select(0, source) * q.index_select(0, target)).unsqueeze(-1)  # q_i q_j
        nodes = Features(velocities[mask].unsqueeze(-2), q.unsqueeze(-1))
        hidden = self.backbone(nodes, edge_index, relative, edges, weights)
        out = self.head(hidden).vectors  # [n_real, 2, d]; its dtype may differ under autocast
        out = out.new_zeros(*mask.shape, 2, out.shape[-1]).index_put((mask,), out)
        return out[..., 0, :], out[..., 1, :]
