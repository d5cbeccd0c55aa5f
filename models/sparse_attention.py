"""Equivariant attention over an edge list (the sparse, radius-graph form of eq. 1-3, 9-12).

The same layer as :class:`~models.attention.EquivariantAttention` (same parameters, so a dense
checkpoint loads into it), evaluated only on the pairs of ``edge_index`` (torch_geometric
convention: row 0 = source ``j``, row 1 = target ``i``). Per edge ``(j -> i)``:

    k_ji = Phi_k(h_j + {x_i - x_j}, s_j + e_ji),  v_ji = Phi_v(...)         (eq. 2-3)
    l_ji = <flat(q_i), flat(k_ji)> / sqrt(d)                               (eq. 9-11)
    a_ji = w_ji exp(l_ji) / sum_j' w_j'i exp(l_j'i)                        (switched softmax)
    out_i = sum_j a_ji v_ji                                                (eq. 12)

``w_ji`` is the switching weight of the pair's distance (:func:`~models.graph.switching_function`;
1 when no weights are given), so a pair's weight goes to 0 smoothly at the cutoff. With every
``w = 1`` and all pairs listed, this is exactly the dense softmax. The softmax and the sums are
scatters over the targets (``scatter_reduce`` / ``index_add``), so time and memory grow with the
number of edges; there is no loop over nodes or edges.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from invattn.models.attention import EquivariantAttention
from invattn.models.features import Features
from invattn.models.graph import check_cutoff, radius_graph, switching_function
from invattn.models.inputs import check_shape

__all__ = ["SparseEquivariantAttention", "edge_geometry", "scatter_switched_softmax_sum"]


def edge_geometry(positions: Tensor, edge_index: Tensor, cutoff: float | None = None,
                  cutoff_inner: float | None = None) -> tuple[Tensor, Tensor | None]:
    """Relative positions ``x_i - x_j`` ``[E, d]`` of the edges and their switching weights ``[E]``.

    The weights are ``None`` when ``cutoff`` is ``None`` (every listed pair counts fully).
    """
    source, target = edge_index
    relative = positions.index_select(0, target) - positions.index_select(0, source)
    if cutoff is None:
        return relative, None
    cutoff, inner = check_cutoff(cutoff, cutoff_inner)
    return relative, switching_function(relative.pow(2).sum(-1), cutoff, inner)


def scatter_switched_softmax_sum(logits: Tensor, weights: Tensor | None, target: Tensor, n_nodes: int,
                                 values: Tensor) -> Tensor:
    """``out_i = sum_e w_e exp(l_e) v_e / sum_e w_e exp(l_e)`` over the edges ``e`` into each ``i``.

    Parameters
    ----------
    logits : Tensor ``[E, H]``
    weights : Tensor ``[E]`` or None (all 1)
    target : Tensor ``[E]`` long
    n_nodes : int
    values : Tensor ``[E, H, C]``

    Returns
    -------
    Tensor ``[n_nodes, H, C]``; 0 for a node with no edge of positive weight (never NaN).

    Notes
    -----
    Computed as ``p_e = w_e exp(l_e - m_i)`` with ``m_i = max_e (l_e + log w_e)`` over the edges
    into ``i`` (detached: the result does not depend on the shift). Shifting by the largest
    *weighted* term, not the largest logit, keeps that term at exactly 1, so the denominator is
    at least 1: a pair of weight 0 (at the cutoff) with by far the largest logit cannot make every
    other term underflow and the node's output collapse to 0. With every ``w = 1`` this is the
    usual max-shifted softmax. The exponent is capped below the dtype's overflow, which can only
    bind for pairs whose weight is below ``exp(-78)`` (float32), i.e. within rounding of the cutoff.
    """
    out_dtype = values.dtype
    # Under autocast the logits/values may be bf16/fp16 and the weights float32: accumulate in
    # (at least) float32, as softmax does under autocast, and return the values' dtype.
    dtype = torch.promote_types(torch.promote_types(logits.dtype, values.dtype), torch.float32)
    logits, values = logits.to(dtype), values.to(dtype)
    if weights is not None:
        weights = weights.to(dtype)
    h = logits.shape[1]
    scores = logits.detach()
    if weights is not None:
        scores = scores + torch.log(weights.detach())[:, None]  # -inf for w = 0: never the max
    shift = logits.new_full((n_nodes, h), -torch.inf)
    shift = shift.scatter_reduce(0, target[:, None].expand(-1, h), scores, "amax", include_self=False)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # nodes without weight
    exponent = logits - shift.index_select(0, target)
    p = torch.exp(exponent.clamp(max=math.log(torch.finfo(logits.dtype).max) - 10.0))
    if weights is not None:  # weight-0 pairs contribute exactly 0, with zero (not inf * 0) gradients
        p = torch.where(weights[:, None] > 0, p * weights[:, None], torch.zeros_like(p))
    denominator = logits.new_zeros(n_nodes, h).index_add_(0, target, p)
    numerator = values.new_zeros(n_nodes, h, values.shape[-1]).index_add_(0, target, p[..., None] * values)
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return (numerator / safe[..., None]).to(out_dtype)


class SparseEquivariantAttention(EquivariantAttention):
    """Multi-head equivariant self-attention on a graph given as an edge list.

    Constructor: exactly :class:`~models.attention.EquivariantAttention`'s (same parameters).

    Shapes
    ------
    ``forward(features: Features([n, T, 3], [n, L]), edge_index [2, E] long (source j, target i),
    relative_positions [E, 3] (x_i - x_j), edge_features [E, F], edge_weights [E] | None)
    -> Features([n, T', 3], [n, L'])``.

    The dense layer's ``j == i`` term is the self-loop ``(i, i)``: include self-loops (as
    :func:`~models.graph.radius_graph` does) to get the same layer; a node without incoming edges
    gets zero outputs. ``edge_weights`` (in ``[0, 1]``) scale each pair inside the softmax
    (:func:`scatter_switched_softmax_sum`); pass the switching weights of a cutoff there.

    :meth:`forward_data` takes a torch_geometric ``Data`` / ``Batch`` instead.

    Examples
    --------
    >>> from models.features import FeatureShape
    >>> layer = SparseEquivariantAttention(FeatureShape(1, 1), FeatureShape(4, 8), edge_dim=1,
    ...                                    heads=2, query_shape=FeatureShape(2, 4), hidden=16)
    >>> x = torch.randn(6, 3)
    >>> edges = radius_graph(x, cutoff=1.5)
    >>> out = layer(Features(torch.randn(6, 1, 3), torch.randn(6, 1)), edges,
    ...             x[edges[1]] - x[edges[0]], torch.randn(edges.shape[1], 1))
    >>> out
    Features(vectors=[6, 4, 3], scalars=[6, 8])
    """

    def forward(self, features: Features, edge_index: Tensor, relative_positions: Tensor,
                edge_features: Tensor, edge_weights: Tensor | None = None) -> Features:
        n, h = features.vectors.shape[0], self.heads
        source, target = edge_index[0], edge_index[1]
        query = self.queries(features)  # eq. 1, per node: [n, H, d]
        # Keys and values per edge through the dense layer's code, with the edges as the
        # neighbour axis of a batch of one: [1, E (as j), 1 (as i), ...].
        senders = Features(features.vectors.index_select(0, source)[None],
                           features.scalars.index_select(0, source)[None])
        key, value = self.keys_values(senders, relative_positions[None, :, None],
                                      edge_features[None, :, None])  # eq. 2-3
        logits = (query.index_select(0, target) * key[0, :, 0]).sum(-1) * self.scale  # eq. 11, [E, H]
        t, l = self.out_shape.vectors, self.out_shape.scalars
        value_vectors = value.vectors[0, :, 0].unflatten(-2, (h, -1)).flatten(-2)  # [E, H, d T'/H]
        value_scalars = value.scalars[0, :, 0].unflatten(-1, (h, -1))  # [E, H, L'/H]
        out = scatter_switched_softmax_sum(logits, edge_weights, target, n,
                                           torch.cat([value_vectors, value_scalars], -1))  # eq. 12
        d = self.group.dim
        out_vectors, out_scalars = out.split([d * t // h, l // h], dim=-1)
        return Features(out_vectors.reshape(n, t, d), out_scalars.reshape(n, l))

    def forward_data(self, data, cutoff: float | None = None, cutoff_inner: float | None = None) -> Features:
        """Apply the layer to a torch_geometric ``Data`` / ``Batch``.

        Reads ``data.pos [n, 3]``, ``data.x [n, L]`` (node scalars), ``data.vectors [n, T, 3]``
        (node vectors; may be absent when ``T = 0``), ``data.edge_attr [E, F]`` (may be absent
        when ``F = 0``) and ``data.edge_index`` (if absent, the radius graph of ``cutoff`` is
        built with :func:`~models.graph.radius_graph` using ``data.batch``). With a ``cutoff``
        the edges are weighted by the switching function.

        Raises
        ------
        ValueError
            If ``data`` has no ``pos``, or no ``edge_index`` and no ``cutoff``, or a field's shape
            does not fit the layer (the message names the field), or an edge names a missing node.
        """
        positions = getattr(data, "pos", None)
        if positions is None:
            raise ValueError("data has no 'pos' (node positions [n, 3])")
        n = positions.shape[0]
        scalars = getattr(data, "x", None)
        if scalars is None:
            scalars = positions.new_zeros(n, 0)
        vectors = getattr(data, "vectors", None)
        if vectors is None:
            vectors = positions.new_zeros(n, 0, self.group.dim)
        edge_index = getattr(data, "edge_index", None)
        if edge_index is None:
            if cutoff is None:
                raise ValueError("data has no 'edge_index' and no cutoff was given to build one")
            edge_index = radius_graph(positions, cutoff, getattr(data, "batch", None), dim=self.group.dim)
        edge_features = getattr(data, "edge_attr", None)
        if edge_features is None:
            edge_features = positions.new_zeros(edge_index.shape[1], 0)
        check_shape("data.pos", positions, (None, self.group.dim))
        check_shape("data.x", scalars, (n, self.in_shape.scalars))
        check_shape("data.vectors", vectors, (n, self.in_shape.vectors, self.group.dim))
        check_shape("data.edge_index", edge_index, (2, None))
        check_shape("data.edge_attr", edge_features, (edge_index.shape[1], self.edge_dim))
        if edge_index.numel() and not (0 <= int(edge_index.min()) and int(edge_index.max()) < n):
            raise ValueError(f"data.edge_index refers to nodes outside 0..{n - 1}")
        relative, weights = edge_geometry(positions, edge_index, cutoff, cutoff_inner)
        return self(Features(vectors, scalars), edge_index, relative, edge_features, weights)
