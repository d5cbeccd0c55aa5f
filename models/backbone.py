"""A stack of equivariant attention layers with residual connections (shared by both tasks).

Layer 0 maps the input features to the hidden channels; every later layer is pre-normalized
and residual, ``h <- h + Attention(GatedNonlinearity(h))``, and the stack ends with one more
:class:`~models.nonlinearity.GatedNonlinearity`. Residual sums and invariant gates are both
equivariant, so the stack is as equivariant as each attention layer (paper section 2).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from invattn.checks import check_int
from invattn.models.attention import EquivariantAttention
from invattn.models.features import Features, FeatureShape
from invattn.models.groups import parse_group
from invattn.models.invariants import n_combinations
from invattn.models.nonlinearity import GatedNonlinearity
from invattn.models.sampling import Sampling

__all__ = ["EquivariantTransformer", "validate_sampling"]


def validate_sizes(**sizes: int) -> None:
    """Every layer size must be a positive int (a zero-width layer has nothing to learn).

    Raises
    ------
    ValueError
        Naming the first offending argument.
    """
    for name, value in sizes.items():
        check_int(name, value, 1)


def validate_sampling(subdeterminants: Sampling | int | str, cross_products: Sampling | int | str,
                      hidden_vectors: int, dim: int = 3) -> tuple[Sampling, Sampling]:
    """Parse the model-wide sampling options once and check them against the largest map
    (``T + 1`` key/value vectors); returns ``(subdeterminants, cross_products)`` as
    :class:`~models.sampling.Sampling`, which the model hands unchanged to every map.

    The options are validated for the E(3) variant too (where they are then unused), so a
    config that is wrong for one variant is wrong for both.

    ``dim`` is the group's dimension ``d``: subdeterminants take ``d`` vectors, cross products ``d - 1``.

    Raises
    ------
    ValueError
        If an option is neither ``"all"`` nor an int in ``[1, C(T+1, d)]`` (triples in 3D) /
        ``[1, C(T+1, d-1)]`` (cross products).
    """
    t = hidden_vectors + 1
    parsed = []
    for name, option, r in (("subdeterminants", subdeterminants, dim), ("cross_products", cross_products, dim - 1)):
        sets = ("triples" if r == 3 else "pairs") if dim == 3 else f"{r}-sets"
        what = f"{name} (C({t},{r}) {sets} for {hidden_vectors} vector channels + 1)"
        parsed.append(Sampling.parse(option, what).check(n_combinations(t, r), what))
    return parsed[0], parsed[1]


class EquivariantTransformer(nn.Module):
    """``n_layers`` equivariant attention layers on dense padded graphs.

    Parameters
    ----------
    in_shape : FeatureShape
        Input node channels.
    hidden_shape : FeatureShape
        Channels of every hidden layer (and of the output).
    edge_dim : int
        Edge scalars per pair.
    n_layers, heads : int
    query_shape : FeatureShape
        Query/key channels of every layer.
    mlp_hidden : int
        Width of every Phi's MLP.
    group : str or Group
        Any name of :func:`~models.groups.parse_group`; vectors are ``d``-dimensional (3 below).
    subdeterminants, cross_products : Sampling, "all" or int
        Model-wide sampling options, passed unchanged to every attention layer; a map with at
        most ``k`` index sets keeps them all (:meth:`~models.sampling.Sampling.size`).
    generator : torch.Generator, optional

    Shapes
    ------
    ``forward(Features([B, N, T_in, 3], [B, N, L_in]), relative_positions [B, N, N, 3] ([b, j, i] = x_i - x_j),
    edge_features [B, N, N, E], mask [B, N] bool) -> Features([B, N, T, 3], [B, N, L])``
    """

    attention_class = EquivariantAttention  # the sparse stack swaps in its edge-list layer

    def __init__(self, in_shape: FeatureShape, hidden_shape: FeatureShape, edge_dim: int,
                 n_layers: int, heads: int, query_shape: FeatureShape, mlp_hidden: int,
                 group: str, subdeterminants: Sampling | int | str = "all",
                 cross_products: Sampling | int | str = "all", generator: torch.Generator | None = None):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        shape = FeatureShape(*in_shape)
        group = parse_group(group)
        options = {"subdeterminants": Sampling.parse(subdeterminants, "subdeterminants"),
                   "cross_products": Sampling.parse(cross_products, "cross_products")}
        for index in range(n_layers):
            self.layers.append(self.attention_class(shape, hidden_shape, edge_dim, heads, query_shape,
                                                    mlp_hidden, group, generator=generator, **options))
            # Layer 0 changes the channel count, so it has no residual and no pre-norm.
            self.norms.append(GatedNonlinearity(hidden_shape, group) if index else nn.Identity())
            shape = FeatureShape(*hidden_shape)
        self.final_norm = GatedNonlinearity(hidden_shape, group)

    def forward(self, features: Features, relative_positions: Tensor, edge_features: Tensor,
                mask: Tensor) -> Features:
        for index, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            update = layer(norm(features), relative_positions, edge_features, mask)
            features = features + update if index else update
        return self.final_norm(features).masked(mask)
