"""Invariants and basis vectors of the key/value input, factored into node and pair parts.

The key and value maps (eq. 2-3) act on the vectors ``U_ij = {h_j,1..h_j,T} + {r_ij}`` with
``r_ij = x_i - x_j`` and the scalars ``{e_ji} + {s_j}``, for every pair ``(i, j)``. Most of their
invariants and basis vectors depend on ``j`` only, so they are computed once per node rather
than once per pair:

==========================  ===================================  ============================
eq. 6/8 term                 node level (``[B, N, .]``)           pair level (``[B, N, N, .]``)
==========================  ===================================  ============================
Gram ``<u_a, u_b>``          ``<h_a, h_b>``                       ``<r, h_a>``, ``<r, r>``
subdeterminant (a<b<c)       ``det[h_a, h_b, h_c]``               ``det[h_a, h_b, r] = r.(h_a x h_b)``
scalars                      ``s_j``                              ``e_ji``
basis vectors                ``h_a``, ``h_a x h_b``               ``r``, ``h_a x r``
==========================  ===================================  ============================

(3D, SE(3)). In ``d`` dimensions (:mod:`models.groups`) the subdeterminants take ``d`` vectors
and the cross products ``d - 1``; a set that contains ``r`` is pair level: its determinant is
``r . cof(h_a, ..)`` (the cofactor computed once per node) and its cross product
``cross(h_a, .., r)`` (2D: ``J r``). Scalar products use the group's bilinear form.

The sampled subsets (paper "Scalability") are drawn over the ``T + 1`` vectors exactly as a
generic :class:`~models.equivariant_map.EquivariantMap` on ``U`` would draw them, and stored as
persistent buffers ``triples`` ``[k, 3]`` and ``cross_pairs`` ``[p, 2]`` (index ``T`` is ``r``);
the node/pair split of those subsets is derived from them at construction and again after a
state dict is loaded. ``invariant_index`` and ``basis_index`` map this module's layout back to
the generic layout (Gram upper triangle of ``U``, subdeterminants in ``triples`` order, edge
scalars, node scalars; basis ``U`` then cross products in ``cross_pairs`` order), which is how
the tests check the factorization against the generic formulas.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from invattn.models.features import Features, FeatureShape
from invattn.models.groups import cofactor, determinant, parse_group
from invattn.models.invariants import choose_combinations, gram_upper, gram_upper_index
from invattn.models.sampling import Sampling

__all__ = ["PairInputs", "NeighbourInvariants"]


class PairInputs(NamedTuple):
    """Invariants and basis vectors of all key/value inputs ``(i, j)``.

    Attributes
    ----------
    node_invariants : Tensor ``[B, N_j, D_node]`` (depends on ``j`` only)
    pair_invariants : Tensor ``[B, N_j, N_i, D_pair]``
    node_basis : Tensor ``[B, N_j, K_node, d]`` (depends on ``j`` only)
    pair_basis : Tensor ``[B, N_j, N_i, K_pair, d]``

    Pair tensors are indexed ``[b, j, i]`` (neighbour first): per neighbour ``j`` the rows over
    ``i`` are contiguous, so contracting with node-level tensors of ``j`` is a plain batched
    matrix product without a transposed copy.
    """

    node_invariants: Tensor
    pair_invariants: Tensor
    node_basis: Tensor
    pair_basis: Tensor


def _resplit_after_load(module: "NeighbourInvariants", _incompatible_keys) -> None:
    module._split_subsets()


class NeighbourInvariants(nn.Module):
    """Invariants (eq. 8) and basis vectors (eq. 6) of the key/value inputs of eq. 2-3.

    Parameters
    ----------
    node_shape : FeatureShape
        Node channels ``(T, L)``; the maps see ``T + 1`` vectors and ``L + E`` scalars.
    edge_dim : int
        Edge scalars ``E``.
    group : str or Group
        Any name of :func:`~models.groups.parse_group` (default ``"SE3"``).
    subdeterminants, cross_products : Sampling, "all" or int
        Sampling over the ``C(T+1, d)`` triples / ``C(T+1, d-1)`` pairs (3D names; see
        :func:`~models.invariants.choose_combinations`).
    generator : torch.Generator, optional

    Shapes
    ------
    ``forward(Features([B, N, T, d], [B, N, L]), relative_positions [B, N_j, N_i, d]
    (entry ``[b, j, i] = x_i - x_j``), edge_features [B, N_j, N_i, E] (``e_ji``)) -> PairInputs``
    """

    def __init__(self, node_shape: FeatureShape, edge_dim: int, group: str = "SE3",
                 subdeterminants: Sampling | int | str = "all", cross_products: Sampling | int | str = "all",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.node_shape = FeatureShape(*node_shape)
        self.edge_dim = edge_dim
        self.group = parse_group(group)
        t, d = self.node_shape.vectors, self.group.dim
        self.register_buffer("node_gram_index", gram_upper_index(t), persistent=False)
        if self.group.special:
            self.register_buffer("triples", choose_combinations(t + 1, d, subdeterminants, generator))
            self.register_buffer("cross_pairs", choose_combinations(t + 1, d - 1, cross_products, generator))
        else:
            self.triples = torch.zeros(0, d, dtype=torch.long)  # plain attributes: not in state dict
            self.cross_pairs = torch.zeros(0, d - 1, dtype=torch.long)
        self._split_subsets()
        # A loaded checkpoint may bring different subsets: re-derive the node/pair split.
        self.register_load_state_dict_post_hook(_resplit_after_load)
        self.n_invariants = (t + 1) * (t + 2) // 2 + self.triples.shape[0] + edge_dim + self.node_shape.scalars
        self.n_basis = t + 1 + self.cross_pairs.shape[0]

    def _split_subsets(self) -> None:
        """Derive node-level / pair-level index sets and the generic-layout maps from the subsets."""
        t, l, e = self.node_shape.vectors, self.node_shape.scalars, self.edge_dim
        device = self.node_gram_index.device
        triples = self.triples.to(device)
        pairs = self.cross_pairs.to(device)
        # Sets are sorted and r has the largest index T, so a set holds r iff its last entry is T.
        node_triple = triples[:, -1] < t  # det[h_a, h_b, h_c]; otherwise det[h_a, h_b, r]
        node_pair = pairs[:, -1] < t  # h_a x h_b; otherwise h_a x r
        self.register_buffer("node_triples", triples[node_triple], persistent=False)
        self.register_buffer("det_pairs", triples[~node_triple][:, :-1], persistent=False)
        self.register_buffer("node_cross_pairs", pairs[node_pair], persistent=False)
        # [P, d - 2]: the h's crossed with r (3D: one per set; 2D: none, the set is {r} alone)
        self.register_buffer("relative_cross_index", pairs[~node_pair][:, :-1], persistent=False)

        # Column maps back to the generic layout (tests only; cheap to build).
        gram_position = {}
        for position, (a, b) in enumerate(torch.triu_indices(t + 1, t + 1).t().tolist()):
            gram_position[(a, b)] = position
        n_gram, n_det = len(gram_position), triples.shape[0]
        triple_rows = torch.arange(n_det, device=device)
        node_columns = ([gram_position[(a, b)] for a, b in torch.triu_indices(t, t).t().tolist()]
                        + (n_gram + triple_rows[node_triple]).tolist()
                        + [n_gram + n_det + e + i for i in range(l)])
        pair_columns = ([gram_position[(a, t)] for a in range(t)] + [gram_position[(t, t)]]
                        + (n_gram + triple_rows[~node_triple]).tolist()
                        + [n_gram + n_det + i for i in range(e)])
        self.register_buffer("invariant_index", torch.tensor(node_columns + pair_columns, dtype=torch.long,
                                                             device=device), persistent=False)
        pair_rows = torch.arange(pairs.shape[0], device=device) + t + 1
        basis = list(range(t)) + pair_rows[node_pair].tolist() + [t] + pair_rows[~node_pair].tolist()
        self.register_buffer("basis_index", torch.tensor(basis, dtype=torch.long, device=device),
                             persistent=False)

    def forward(self, node: Features, relative_positions: Tensor, edge_features: Tensor) -> PairInputs:
        vectors, scalars = node  # [B, N, T, d], [B, N, L]
        r = relative_positions  # [B, N_j, N_i, d], r[b, j, i] = x_i - x_j
        group = self.group
        asinh = torch.asinh  # tames degree-2/3 invariants of long vectors; odd, smooth, bijective

        def gather(index: Tensor) -> list[Tensor]:  # the vectors of each index set, column by column
            return [vectors.index_select(-2, index[:, k]) for k in range(index.shape[1])]

        node_inv = [asinh(gram_upper(vectors, self.node_gram_index, group))]
        node_basis = [vectors]
        if self.node_triples.shape[0]:
            node_inv.append(asinh(determinant(gather(self.node_triples))))
        node_inv.append(scalars)
        if self.node_cross_pairs.shape[0]:
            node_basis.append(group.cross(gather(self.node_cross_pairs)))

        # Pair level: dot products of r with node-level vectors of j, one small matmul per node j.
        lowered = group.lower(r)
        dots = [lowered @ vectors.transpose(-1, -2), (lowered * r).sum(-1, keepdim=True)]  # <r, h_a>, <r, r>
        if self.det_pairs.shape[0]:
            dots.append(r @ cofactor(gather(self.det_pairs)).transpose(-1, -2))  # det[h_a, h_b, r]
        pair_inv = [asinh(torch.cat(dots, dim=-1)), edge_features]
        pair_basis = [r.unsqueeze(-2)]
        if self.relative_cross_index.shape[0]:
            h = [v.unsqueeze(2) for v in gather(self.relative_cross_index)]  # [B, N_j, 1, P, d] each
            pair_basis.append(group.cross(h + [r.unsqueeze(-2)]))  # h_a x r
        return PairInputs(torch.cat(node_inv, -1), torch.cat(pair_inv, -1),
                          torch.cat(node_basis, -2), torch.cat(pair_basis, -2))

    def extra_repr(self) -> str:
        return (f"{self.node_shape} + r_ij, edge_dim={self.edge_dim}, group={self.group}, "
                f"triples={self.triples.shape[0]}, cross_pairs={self.cross_pairs.shape[0]}")
