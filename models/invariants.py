"""Invariants and equivariant products of a set of vectors (paper eq. 6 and 8).

For vectors ``v_1..v_T`` the O(3) invariants are the scalar products ``<v_a, v_b>`` (the Gram
matrix); SO(3) adds the 3x3 subdeterminants ``det[v_a, v_b, v_c]``, which flip sign under a
reflection (Villar et al. 2021, "Scalars are universal", ref. [40] of the paper). The
SO(3)-equivariant vectors beyond the inputs are the cross products ``v_a x v_b`` (eq. 6).
Other groups (:mod:`models.groups`) change the bilinear form of the scalar products, the size
of the subdeterminants (``d x d``) and the cross product (of ``d - 1`` vectors); the functions
take the group (default: Euclidean, ``d`` from the vectors' last dim).

Index sets (pairs, triples) are built once at construction as long tensors; the hot path only
gathers with them and does one batched product, never a Python loop over combinations.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from invattn.models.groups import Group, cofactor, determinant
from invattn.models.sampling import Sampling

__all__ = [
    "combinations_index",
    "choose_combinations",
    "resolve_subset_size",
    "gram_upper_index",
    "gram_upper",
    "subdeterminants",
    "cross_products",
    "n_combinations",
]


def combinations_index(n: int, r: int) -> Tensor:
    """All ``r``-subsets of ``range(n)`` in lexicographic order.

    Returns
    -------
    Tensor, long, shape ``[C(n, r), r]`` (``[0, r]`` when ``n < r``).

    Examples
    --------
    >>> combinations_index(4, 3).tolist()
    [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]
    """
    combos = list(itertools.combinations(range(n), r))
    return torch.tensor(combos, dtype=torch.long).reshape(len(combos), r)


def resolve_subset_size(option, total: int, what: str) -> int:
    """How many of ``total`` index sets ``option`` keeps, refusing a count above ``total``.

    Parameters
    ----------
    option : Sampling, "all" or int
        Parsed by :meth:`~models.sampling.Sampling.parse`.
    total : int
        Number of combinations available.
    what : str
        Name used in error messages (e.g. ``"subdeterminants"``).

    Raises
    ------
    ValueError
        If ``option`` is neither ``"all"`` nor an int in ``[1, total]``.
    """
    return Sampling.parse(option, what).check(total, what).size(total)


def choose_combinations(n: int, r: int, option: Sampling | int | str = "all",
                        generator: torch.Generator | None = None) -> Tensor:
    """All, or a random subset of ``k``, of the ``r``-subsets of ``range(n)`` (paper "Scalability").

    The subset is kept in lexicographic order, so ``k = C(n, r)`` returns exactly
    :func:`combinations_index` ``(n, r)`` and a sampled model with ``k`` = all equals the full model.

    Parameters
    ----------
    n, r : int
        Set size and subset size.
    option : Sampling, "all" or int
        How many subsets to keep.  A model's :class:`~models.sampling.Sampling` (checked against
        its largest map) keeps ``min(k, C(n, r))``; a plain ``"all"`` / int is checked here
        (:func:`resolve_subset_size`: ``k`` above ``C(n, r)`` is an error).
    generator : torch.Generator, optional
        Source of randomness (CPU generator); ``None`` uses torch's global RNG.

    Returns
    -------
    Tensor, long, shape ``[k, r]``.
    """
    everything = combinations_index(n, r)
    total = everything.shape[0]
    if total == 0:
        return everything
    what = f"subset of C({n},{r})"
    k = option.size(total) if isinstance(option, Sampling) else resolve_subset_size(option, total, what)
    if k == total:
        return everything
    keep = torch.randperm(total, generator=generator)[:k].sort().values
    return everything[keep]


def gram_upper_index(n: int, device=None) -> Tensor:
    """Flat indices ``a * n + b`` of the upper triangle ``a <= b`` of an ``n x n`` matrix.

    Returns
    -------
    Tensor, long, shape ``[n (n + 1) / 2]``.
    """
    rows, cols = torch.triu_indices(n, n, device=device)
    return rows * n + cols


def gram_upper(vectors: Tensor, index: Tensor | None = None, group: Group | None = None) -> Tensor:
    """Upper triangle (diagonal included) of the Gram matrix ``<v_a, v_b>`` (eq. 8).

    Parameters
    ----------
    vectors : Tensor, shape ``[..., T, d]``
    index : Tensor, long, optional
        :func:`gram_upper_index` ``(T)``; pass a cached buffer to avoid rebuilding it.
    group : Group, optional
        Its bilinear form (Minkowski for the Lorentz groups); ``None``: the Euclidean dot product.

    Returns
    -------
    Tensor, shape ``[..., T (T + 1) / 2]``, ordered row by row.

    Examples
    --------
    >>> gram_upper(torch.eye(3)).tolist()
    [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    """
    t = vectors.shape[-2]
    if index is None:
        index = gram_upper_index(t, vectors.device)
    lowered = vectors if group is None else group.lower(vectors)
    gram = lowered @ vectors.transpose(-1, -2)
    return gram.flatten(-2).index_select(-1, index)


def subdeterminants(vectors: Tensor, triples: Tensor) -> Tensor:
    """``d x d`` subdeterminants ``det[v_a, v_b, ..]`` for the given index sets (eq. 8).

    In 3D the triple product ``det[v_a, v_b, v_c] = v_a . (v_b x v_c)``; in general a Laplace
    expansion (:func:`models.groups.determinant`), not ``torch.linalg.det``: the latter's backward
    goes through the inverse and is wrong or NaN on singular matrices, and every subdeterminant of
    a planar molecule (or of collinear bodies) is singular. The polynomial's gradient (the
    cofactors) is exact everywhere. The determinant needs no bilinear form: it is invariant under
    every group element of determinant +1 (rotations, proper Lorentz transformations).

    Parameters
    ----------
    vectors : Tensor, shape ``[..., T, d]``
    triples : Tensor, long, shape ``[K, d]``
        Index sets ``a < b < ..`` of size ``d`` (see :func:`choose_combinations`).

    Returns
    -------
    Tensor, shape ``[..., K]``; changes sign under a reflection, invariant under rotations.

    Examples
    --------
    >>> subdeterminants(torch.eye(3), torch.tensor([[0, 1, 2]])).tolist()
    [1.0]
    """
    return determinant([vectors.index_select(-2, triples[:, k]) for k in range(triples.shape[1])])


def cross_products(vectors: Tensor, pairs: Tensor, group: Group | None = None) -> Tensor:
    """Generalised cross products of the given index sets (the ``v_S`` of eq. 6).

    3D: ``v_a x v_b`` for pairs; ``d``-D: the product of ``d - 1`` vectors
    (:meth:`models.groups.Group.cross`; 2D: ``J v_a``).

    Parameters
    ----------
    vectors : Tensor, shape ``[..., T, d]``
    pairs : Tensor, long, shape ``[P, d - 1]``
    group : Group, optional
        Its bilinear form raises the cofactor's index (Lorentz); ``None``: Euclidean.

    Returns
    -------
    Tensor, shape ``[..., P, d]``; rotation-equivariant, but a pseudovector: under a reflection
    ``Q`` it maps to ``det(Q) Q (v_a x v_b)``, hence absent from the E(3) variant.
    """
    factors = [vectors.index_select(-2, pairs[:, k]) for k in range(pairs.shape[1])]
    return cofactor(factors) if group is None else group.cross(factors)


def n_combinations(n: int, r: int) -> int:
    """``C(n, r)`` (0 when ``n < r``)."""
    return math.comb(n, r) if n >= r else 0
