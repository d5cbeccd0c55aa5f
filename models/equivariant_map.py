"""The equivariant map Phi built from invariant features (paper eq. 4-8).

``Phi({v_t}, {s_l}) -> ({v'_t'}, {s'_l'})`` with

    v'_t' = sum_t f_t't(...) v_t + sum_{a<b} f_t'ab(...) (v_a x v_b)        (eq. 6)
    s'_l' = f_l'(...)                                                      (eq. 7)
    f_*   = g(<v_a, v_b>, det[v_a, v_b, v_c], s)                           (eq. 8)

where ``g`` is one MLP ``Linear -> LayerNorm -> ReLU -> Linear`` (section 2) whose outputs are
all the coefficients ``f`` at once. The E(3) variant drops the subdeterminants and the cross
products, which makes Phi O(3)-equivariant (paper section 3). Other groups
(:mod:`models.groups`: E(d)/SE(d), Lorentz) change the bilinear form, the subdeterminants'
size (``d x d``) and the cross product (of ``d - 1`` vectors); the map is the same otherwise.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from invattn.models.features import Features, FeatureShape
from invattn.models.groups import GROUP_NAMES, Group, parse_group
from invattn.models.invariants import (
    choose_combinations,
    cross_products,
    gram_upper,
    gram_upper_index,
    subdeterminants,
)
from invattn.models.sampling import Sampling

__all__ = ["GROUPS", "GROUP_NAMES", "Group", "parse_group", "CoefficientMLP", "EquivariantMap"]

GROUPS = ("SE3", "E3")  # the paper's two; every name of GROUP_NAMES is accepted


class CoefficientMLP(nn.Module):
    """The MLP ``g`` of eq. 8: ``Linear -> LayerNorm -> ReLU -> Linear`` (paper section 2).

    Maps invariants ``[..., n_invariants]`` to all coefficients ``f_*`` of a Phi at once,
    ``[..., n_out]``. :meth:`hidden_split` evaluates the first layer in pieces for the
    key/value maps: invariants come as a node-level part (broadcast over pairs)
    and a pair-level part, and since the first layer is linear, ``W [a; b] = W_a a + W_b b``
    computes the node-level product once per node rather than once per pair.
    """

    def __init__(self, n_invariants: int, hidden: int, n_out: int):
        super().__init__()
        self.first = nn.Linear(n_invariants, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.ReLU()
        self.last = nn.Linear(hidden, n_out)

    def forward(self, invariants: Tensor) -> Tensor:
        return self.last(self.act(self.norm(self.first(invariants))))

    def hidden_split(self, node_part: Tensor, pair_part: Tensor) -> Tensor:
        """Hidden activations for invariants split into a broadcast node part and a pair part.

        Equals ``ReLU(LayerNorm(first(cat([node_part.expand(...), pair_part], -1))))`` without
        the expansion (first ``D_node`` input columns belong to ``node_part``).
        """
        d = node_part.shape[-1]
        weight = self.first.weight
        hidden = (nn.functional.linear(node_part, weight[:, :d], self.first.bias)
                  + nn.functional.linear(pair_part, weight[:, d:]))
        return self.act(self.norm(hidden))


class EquivariantMap(nn.Module):
    """Phi: an SO(3)- (``group="SE3"``) or O(3)- (``group="E3"``) equivariant map (eq. 4-8), or
    for any group of :mod:`models.groups`.

    Parameters
    ----------
    in_shape : FeatureShape
        Input channels ``(T, L)``.
    out_shape : FeatureShape
        Output channels ``(T', L')``.
    hidden : int
        Width of the MLP ``g``.
    group : str or Group
        A name of :func:`~models.groups.parse_group` (``"SE3"``, ``"E3"``, ``"E2"``, ``"SO+(1,3)"``..).
        A special group (``"SE3"``) adds the ``C(T,d)`` subdeterminants to the invariants and
        the ``C(T,d-1)`` (generalised) cross products to the vectors that are combined.
    subdeterminants, cross_products : Sampling, "all" or int
        Keep all index sets, or a fixed random subset of ``k`` (paper "Scalability"; see
        :func:`~models.invariants.choose_combinations`: a model's Sampling keeps all of at most ``k``).
        The subsets are persistent buffers (``triples`` ``[k, d]``, ``cross_pairs`` ``[k, d-1]``;
        named after the 3D case), so a checkpoint restores them. Ignored for non-special groups.
    generator : torch.Generator, optional
        Draws the subsets (seeded by the model from ``sampling_seed``).

    Notes
    -----
    The Gram entries and subdeterminants are passed through ``asinh`` before ``g``: an odd,
    smooth bijection that is ``~x`` near 0 and ``~log(2|x|)`` for large ``|x|``, so invariants of
    degree 2 and 3 in long vectors do not blow up the first layer. It acts on invariants only,
    so equivariance stays exact. Output vectors are linear in the input vectors (and their cross
    products) with invariant coefficients; an input with no vectors gives zero output vectors.

    Shapes
    ------
    ``forward(Features([..., T, d], [..., L])) -> Features([..., T', d], [..., L'])`` (``d = 3``
    for E3/SE3).

    Examples
    --------
    >>> phi = EquivariantMap(FeatureShape(4, 8), FeatureShape(2, 3), hidden=16)
    >>> phi.extra_repr()
    'FeatureShape(4x3d + 8x0d) -> FeatureShape(2x3d + 3x0d), group=SE3, invariants=10+4+8, basis=4+6'
    >>> phi(Features(torch.randn(7, 4, 3), torch.randn(7, 8)))
    Features(vectors=[7, 2, 3], scalars=[7, 3])
    """

    def __init__(self, in_shape: FeatureShape, out_shape: FeatureShape, hidden: int,
                 group: str = "SE3", subdeterminants: Sampling | int | str = "all",
                 cross_products: Sampling | int | str = "all", generator: torch.Generator | None = None):
        super().__init__()
        self.in_shape = FeatureShape(*in_shape)
        self.out_shape = FeatureShape(*out_shape)
        self.group = parse_group(group)
        t, d = self.in_shape.vectors, self.group.dim
        self.register_buffer("gram_index", gram_upper_index(t), persistent=False)
        if self.group.special:
            self.register_buffer("triples", choose_combinations(t, d, subdeterminants, generator))
            self.register_buffer("cross_pairs", choose_combinations(t, d - 1, cross_products, generator))
            n_triples, n_cross = self.triples.shape[0], self.cross_pairs.shape[0]
        else:
            self.triples = self.cross_pairs = None
            n_triples = n_cross = 0
        self.n_gram = t * (t + 1) // 2
        self.n_triples, self.n_basis = n_triples, t + n_cross
        n_invariants = self.n_gram + n_triples + self.in_shape.scalars
        if n_invariants == 0:
            raise ValueError(f"Phi needs at least one input vector or scalar, got {self.in_shape}")
        n_out = self.out_shape.vectors * self.n_basis + self.out_shape.scalars
        self.g = CoefficientMLP(n_invariants, hidden, n_out)

    def invariants(self, features: Features) -> Tensor:
        """Input of ``g`` (eq. 8): ``asinh`` of Gram upper triangle and subdeterminants, then scalars.

        Returns
        -------
        Tensor, shape ``[..., T(T+1)/2 + K + L]``.
        """
        parts = [torch.asinh(gram_upper(features.vectors, self.gram_index, self.group))]
        if self.n_triples:
            parts.append(torch.asinh(subdeterminants(features.vectors, self.triples)))
        parts.append(features.scalars)
        return torch.cat(parts, dim=-1)

    def basis(self, vectors: Tensor) -> Tensor:
        """Vectors combined by eq. 6: the inputs, then the (sampled) cross products.

        Returns
        -------
        Tensor, shape ``[..., T + P, d]``.
        """
        if self.n_basis == vectors.shape[-2]:
            return vectors
        return torch.cat([vectors, cross_products(vectors, self.cross_pairs, self.group)], dim=-2)

    def forward(self, features: Features) -> Features:
        coefficients = self.g(self.invariants(features))
        t_out, n_basis = self.out_shape.vectors, self.n_basis
        weights, scalars = coefficients.split([t_out * n_basis, self.out_shape.scalars], -1)
        if n_basis == 0:  # nothing to combine (e.g. QM9's first query): zero vectors
            vectors = features.vectors.new_zeros(*features.vectors.shape[:-2], t_out, self.group.dim)
        else:
            vectors = weights.unflatten(-1, (t_out, n_basis)) @ self.basis(features.vectors)  # eq. 6
        return Features(vectors, scalars)

    def extra_repr(self) -> str:
        t = self.in_shape.vectors
        return (f"{self.in_shape} -> {self.out_shape}, group={self.group}, "
                f"invariants={self.n_gram}+{self.n_triples}+{self.in_shape.scalars}, "
                f"basis={t}+{self.n_basis - t}")
