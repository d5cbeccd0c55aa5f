"""Equivariant multi-head self-attention from invariant features (paper eq. 1-3, 9-12).

For node ``i`` and neighbour ``j`` (dense, all pairs of real nodes, ``j == i`` included):

    q_i    = Phi_q(h_i, s_i)                                   (eq. 1)
    k_ji   = Phi_k(h_j + {x_i - x_j}, s_j + e_ji)              (eq. 2)
    v_ji   = Phi_v(h_j + {x_i - x_j}, s_j + e_ji)              (eq. 3)
    a_ji   = softmax_j(<flat(q_i), flat(k_ji)> / sqrt(d))      (eq. 9-11)
    out_i  = sum_j a_ji v_ji                                   (eq. 12)

``flat`` concatenates the vectors' coordinates and the scalars (eq. 9-10); the inner product of
two such flattenings is invariant because rotations preserve dot products. Heads split every
channel group (query/key vectors and scalars, value vectors and scalars) evenly.

Self-edges are kept: the term ``j == i`` sees the node's own features and a zero relative
vector, whose scalar products, subdeterminants and cross products are exactly 0 (no square root
or division is taken, so this is safe for values and gradients); it also guarantees that every
real node has a neighbour to attend to. Padded neighbours are masked out of the softmax.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from invattn.models.equivariant_map import CoefficientMLP, EquivariantMap
from invattn.models.features import Features, FeatureShape
from invattn.models.groups import parse_group
from invattn.models.neighbour_invariants import NeighbourInvariants, PairInputs
from invattn.models.sampling import Sampling

__all__ = ["EquivariantAttention", "masked_softmax"]

# When to contract the node-basis term per node first (see EquivariantAttention._combine).
CONTRACT_FACTOR = 12


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` ignoring entries where ``mask`` is False; all-masked slices give 0.

    Masked logits are set to the dtype's most negative finite value (not ``-inf``, whose
    all-masked softmax is NaN), and the weights are multiplied by the mask afterwards so that
    an all-masked slice (a padded node's row) gets zero weights rather than a uniform average.

    Parameters
    ----------
    logits : Tensor
    mask : Tensor, bool, broadcastable to ``logits``
    dim : int

    Examples
    --------
    >>> masked_softmax(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]), -1).tolist()
    [[1.0, 0.0], [0.0, 0.0]]
    """
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=dim) * mask


class EquivariantAttention(nn.Module):
    """One multi-head equivariant self-attention layer on a dense, padded batch of graphs.

    Parameters
    ----------
    in_shape : FeatureShape
        Node input channels ``(T, L)``.
    out_shape : FeatureShape
        Node output channels ``(T', L')`` (the value channels of eq. 3 and 12).
    edge_dim : int
        Number of edge scalars ``e_ji`` appended to the key/value scalars (eq. 2-3).
    heads : int
        Attention heads; must divide every channel count of ``query_shape`` and ``out_shape``.
    query_shape : FeatureShape
        Query/key channels ``(T_q, L_q)``; flattened dimension ``3 T_q + L_q`` (eq. 9-10).
    hidden : int
        Width of each Phi's MLP ``g``.
    group : str or Group
        Any name of :func:`~models.groups.parse_group` (``"SE3"``, ``"E2"``, ``"SO+(1,3)"``, ..);
        vectors are ``d``-dimensional (3 below). Under a Lorentz group the logits pair query and key
        vectors through the Minkowski form (the plain dot product is not invariant there).
    subdeterminants, cross_products : Sampling, "all" or int
        Sampling option of every Phi (see :class:`EquivariantMap`), passed unchanged to the query
        map (``T`` input vectors) and the key/value maps (``T + 1``); a model's
        :class:`~models.sampling.Sampling` keeps all sets of a map with at most ``k``. The key
        and value maps read the same input, so they share one subset (drawn once per layer)
        and its invariants are computed once for both.
    generator : torch.Generator, optional
        Draws the sampled subsets.

    Notes
    -----
    ``Phi_k`` and ``Phi_v`` are separate maps (separate MLPs ``g``) evaluated through
    :class:`~models.neighbour_invariants.NeighbourInvariants`, which computes the node-level
    part of their invariants once per node; node-level basis vectors are combined with one
    batched matrix product per neighbour ``j``.

    Shapes
    ------
    ``forward(features: Features([B, N, T, 3], [B, N, L]), relative_positions [B, N, N, 3]
    (entry ``[b, j, i] = x_i - x_j``), edge_features [B, N, N, E] (entry ``[b, j, i] = e_ji``),
    mask [B, N] bool) -> Features([B, N, T', 3], [B, N, L'])``; padded nodes' outputs are zero.
    Pair tensors are neighbour-major (``[b, j, i]``), see
    :class:`~models.neighbour_invariants.PairInputs`.

    Examples
    --------
    >>> layer = EquivariantAttention(FeatureShape(1, 1), FeatureShape(4, 8), edge_dim=1, heads=2,
    ...                              query_shape=FeatureShape(2, 4), hidden=16)
    >>> x = torch.randn(3, 5, 3)
    >>> out = layer(Features(torch.randn(3, 5, 1, 3), torch.randn(3, 5, 1)),
    ...             x[:, None] - x[:, :, None], torch.randn(3, 5, 5, 1), torch.ones(3, 5, dtype=torch.bool))
    >>> out
    Features(vectors=[3, 5, 4, 3], scalars=[3, 5, 8])
    """

    def __init__(self, in_shape: FeatureShape, out_shape: FeatureShape, edge_dim: int, heads: int,
                 query_shape: FeatureShape, hidden: int, group: str = "SE3",
                 subdeterminants: Sampling | int | str = "all", cross_products: Sampling | int | str = "all",
                 generator: torch.Generator | None = None):
        super().__init__()
        in_shape, out_shape, query_shape = (FeatureShape(*s) for s in (in_shape, out_shape, query_shape))
        for name, count in (("query vectors", query_shape.vectors), ("query scalars", query_shape.scalars),
                            ("value vectors", out_shape.vectors), ("value scalars", out_shape.scalars)):
            if count % heads:
                raise ValueError(f"{name} ({count}) must be divisible by heads ({heads})")
        if query_shape.flat_dim == 0:
            raise ValueError("query_shape must have at least one channel")
        self.in_shape, self.out_shape, self.query_shape = in_shape, out_shape, query_shape
        self.edge_dim, self.heads = edge_dim, heads
        self.group = parse_group(group)

        self.query = EquivariantMap(in_shape, query_shape, hidden, group, subdeterminants,
                                    cross_products, generator)  # eq. 1
        self.neighbours = NeighbourInvariants(in_shape, edge_dim, group, subdeterminants,
                                              cross_products, generator)
        n_inv, n_basis = self.neighbours.n_invariants, self.neighbours.n_basis
        self.key = CoefficientMLP(n_inv, hidden, query_shape.vectors * n_basis + query_shape.scalars)  # eq. 2
        self.value = CoefficientMLP(n_inv, hidden, out_shape.vectors * n_basis + out_shape.scalars)  # eq. 3
        self.scale = 1.0 / math.sqrt((self.group.dim * query_shape.vectors + query_shape.scalars) // heads)

    def _flatten_heads(self, vectors: Tensor, scalars: Tensor) -> Tensor:
        """``[..., T, d], [..., L] -> [..., heads, d T / heads + L / heads]`` (eq. 9-10 per head)."""
        h = self.heads
        vectors = vectors.flatten(-2).unflatten(-1, (h, -1))  # channel-major, so head k owns a block
        return torch.cat([vectors, scalars.unflatten(-1, (h, -1))], dim=-1)

    @staticmethod
    def _combine(mlp: CoefficientMLP, hidden: Tensor, shape: FeatureShape, inputs: PairInputs) -> Features:
        """Last layer of ``g`` and eq. 6-7 for every pair: ``v_t' = sum_k f_t'k u_k``, ``s_l' = f_l'``.

        The last layer's outputs are laid out as ``[T' x K_node node-basis coefficients |
        T' x K_pair pair-basis coefficients | L' scalars]``. The pair-basis coefficients and the
        scalars come from one product with the hidden activations (split afterwards, so the
        backward pass concatenates small gradients rather than summing full-width ones).

        The node-basis term is contracted in the cheaper order when there are many pairs per
        node: with ``f_t'k = W_t'k . a + b_t'k`` (``a`` the pair's hidden activations),
        ``sum_k f_t'k u_k(j) = a . M_j[t'] + sum_k b_t'k u_k(j)`` where
        ``M_j[t'] = sum_k W_t'k u_k(j)`` is built once per node ``j``; the ``T' x K_node``
        per-pair coefficients are then never materialized (same function, reassociated).

        Returns
        -------
        Features ``([B, N_j, N_i, T', 3], [B, N_j, N_i, L'])``.
        """
        t, d = shape.vectors, inputs.pair_basis.shape[-1]
        k_node, k_pair = inputs.node_basis.shape[-2], inputs.pair_basis.shape[-2]
        b, n_j, n_i, width = hidden.shape
        weight, bias = mlp.last.weight, mlp.last.bias
        n_node = t * k_node
        # Per node, M_j costs T' K_node H d multiply-adds; per pair the reassociation saves about
        # H T' (K_node - 3). Measured on a CPU, M_j's einsums cost several times their arithmetic,
        # so the switch is set well above break-even (QM9 molecules: yes; 5 bodies: no).
        contract = k_node and n_i * (k_node - 3) > CONTRACT_FACTOR * k_node
        if contract:
            pair_w, scalars = nn.functional.linear(hidden, weight[n_node:], bias[n_node:]).split(
                [t * k_pair, shape.scalars], -1)
        else:
            node_w, pair_w, scalars = nn.functional.linear(hidden, weight, bias).split(
                [n_node, t * k_pair, shape.scalars], -1)
        if k_pair == 1:  # only x_i - x_j: a broadcast product beats a batch of 1-column matmuls
            vectors = pair_w.unsqueeze(-1) * inputs.pair_basis
        else:
            vectors = pair_w.unflatten(-1, (t, k_pair)) @ inputs.pair_basis
        if contract:
            basis = inputs.node_basis  # [B, N_j, K_node, 3]
            m = torch.einsum("tkh,bjkc->bjhtc", weight[:n_node].view(t, k_node, width), basis)
            node_bias = torch.einsum("tk,bjkc->bjtc", bias[:n_node].view(t, k_node), basis)
            node_vectors = hidden @ m.reshape(b, n_j, width, t * d)  # [B, N_j, N_i, T' * d]
            vectors = vectors + node_vectors.view(b, n_j, n_i, t, d) + node_bias.unsqueeze(2)
        elif k_node:
            node_w = node_w.reshape(b, n_j, n_i * t, k_node)
            vectors = vectors + (node_w @ inputs.node_basis).view(b, n_j, n_i, t, d)
        return Features(vectors, scalars)

    def queries(self, features: Features) -> Tensor:
        """Flattened queries per head (eq. 1, 9): ``Features([..., T, d], [..., L]) -> [..., H, d']``.

        The query vectors are lowered by the group's form (``eta q``, the identity for Euclidean
        groups), so the plain dot product with a flattened key is ``<q, k>``, an invariant.
        """
        query = self.query(features)
        return self._flatten_heads(self.group.lower(query.vectors), query.scalars)

    def keys_values(self, features: Features, relative_positions: Tensor,
                    edge_features: Tensor) -> tuple[Tensor, Features]:
        """Keys (eq. 2, flattened per head as in eq. 10) and values (eq. 3) of every pair.

        Shared by the dense layer and the edge-list layer
        (:class:`~models.sparse_attention.SparseEquivariantAttention`, which passes its edges as
        the neighbour axis of a batch of one: ``[1, E, 1, ...]``).

        Shapes
        ------
        ``features`` ``([B, N_j, T, 3], [B, N_j, L])``, ``relative_positions [B, N_j, N_i, 3]``,
        ``edge_features [B, N_j, N_i, E]`` -> keys ``[B, N_j, N_i, H, d]``, values
        ``Features([B, N_j, N_i, T', 3], [B, N_j, N_i, L'])``.
        """
        inputs = self.neighbours(features, relative_positions, edge_features)
        node_invariants = inputs.node_invariants.unsqueeze(2)  # [B, N_j, 1, D]: broadcast over i
        key = self._combine(self.key, self.key.hidden_split(node_invariants, inputs.pair_invariants),
                            self.query_shape, inputs)  # eq. 2
        value = self._combine(self.value, self.value.hidden_split(node_invariants, inputs.pair_invariants),
                              self.out_shape, inputs)  # eq. 3
        return self._flatten_heads(key.vectors, key.scalars), value

    def forward(self, features: Features, relative_positions: Tensor, edge_features: Tensor,
                mask: Tensor) -> Features:
        h = self.heads
        query = self.queries(features).unsqueeze(1)  # eq. 1, [B, 1, N_i, H, d]
        key, value = self.keys_values(features, relative_positions, edge_features)  # eq. 2-3, 10
        logits = (query * key).sum(-1) * self.scale  # eq. 11, [B, N_j, N_i, H]
        weights = masked_softmax(logits, mask[:, :, None, None], dim=1)  # over neighbours j
        out_vectors = (value.vectors.unflatten(-2, (h, -1)) * weights[..., None, None]).sum(1)  # eq. 12
        out_scalars = (value.scalars.unflatten(-1, (h, -1)) * weights[..., None]).sum(1)
        return Features(out_vectors.flatten(-3, -2), out_scalars.flatten(-2)).masked(mask)

    def extra_repr(self) -> str:
        return (f"{self.in_shape} -> {self.out_shape}, query={self.query_shape}, "
                f"edge_dim={self.edge_dim}, heads={self.heads}")
