"""The attention stack on an edge list (sparse form of :class:`~models.backbone.EquivariantTransformer`).

Same modules and parameter names as the dense stack (a dense checkpoint loads into it and vice
versa); only the attention layers are :class:`~models.sparse_attention.SparseEquivariantAttention`
and the node axis is the flat ``[n]`` of torch_geometric instead of a padded ``[B, N]``.
"""
from __future__ import annotations

from torch import Tensor

from invattn.models.backbone import EquivariantTransformer
from invattn.models.features import Features
from invattn.models.sparse_attention import SparseEquivariantAttention

__all__ = ["SparseEquivariantTransformer"]


class SparseEquivariantTransformer(EquivariantTransformer):
    """``n_layers`` equivariant attention layers on a graph given as an edge list.

    Constructor: exactly :class:`~models.backbone.EquivariantTransformer`'s.

    Shapes
    ------
    ``forward(Features([n, T_in, 3], [n, L_in]), edge_index [2, E] (source j, target i),
    relative_positions [E, 3] (x_i - x_j), edge_features [E, F], edge_weights [E] | None)
    -> Features([n, T, 3], [n, L])``
    """

    attention_class = SparseEquivariantAttention

    def forward(self, features: Features, edge_index: Tensor, relative_positions: Tensor,
                edge_features: Tensor, edge_weights: Tensor | None = None) -> Features:
        for index, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            update = layer(norm(features), edge_index, relative_positions, edge_features, edge_weights)
            features = features + update if index else update
        return self.final_norm(features)
