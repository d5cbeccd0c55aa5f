"""The symmetry groups of the models: E(d)/SE(d) in any dimension d >= 2 and the Lorentz groups.

The paper builds every equivariant map from invariants of a set of vectors (eq. 6-8) and notes
that the construction carries over to other groups by changing those invariants (Villar et al.
2021, "Scalars are universal", ref. [40]). A group here is fixed by three things:

- the dimension ``d`` of its vectors;
- the bilinear form ``<u, v> = sum_k eta_k u_k v_k`` it preserves: Euclidean (``eta = 1``) for
  O(d), Minkowski ``diag(+1, -1, .., -1)`` for the Lorentz group O(1, d-1);
- whether it is *special* (determinant +1 only). Then the ``d x d`` subdeterminants
  ``det[v_1, .., v_d]`` are invariants too, and the generalised cross product of ``d - 1``
  vectors ``w = eta^-1 cof(v_1, .., v_{d-1})`` (defined by ``<w, x> = det[v_1, .., v_{d-1}, x]``)
  is an extra equivariant vector: ``J v`` (rotation by +90 degrees) in 2D, ``v_a x v_b`` in 3D.

The non-special group's invariants are the scalar products alone (first fundamental theorem
of invariant theory for O(d) and O(1, d-1)); it maps mirror images to mirror images, so its
models cannot tell them apart, while the special group's subdeterminants change sign.

Names as the field writes them (case-insensitive, parentheses optional): ``E2``, ``SE2``,
``E3``, ``SE3``, ``E(d)``/``SE(d)`` e.g. ``E4``, ``SE(5)``; ``O(1,3)`` (the full Lorentz group)
and ``SO+(1,3)`` (proper orthochronous: rotations and boosts). The models only see differences
of positions, so E(d) and O(d) act the same way on their inputs (translations drop out).

Everything is a polynomial in the coordinates (no ``torch.linalg.det``, whose backward goes
through an inverse and fails on the singular matrices of planar or collinear inputs).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

__all__ = ["Group", "parse_group", "GROUP_NAMES", "determinant", "cofactor"]

# The names --help lists: the families, with the usual members spelled out.
GROUP_NAMES = ("E2", "SE2", "E3", "SE3", "E(d)", "SE(d)", "O(1,3)", "SO+(1,3)")

_EUCLIDEAN = re.compile(r"^(S?E)\(?(\d+)\)?$")
_LORENTZ = re.compile(r"^(SO\+|O)\(?1,(\d+)\)?$")


class Group(str):
    """A symmetry group, usable wherever its canonical name is (it *is* that string).

    Attributes
    ----------
    dim : int
        Dimension ``d`` of the vectors it acts on.
    special : bool
        Determinant +1 only: subdeterminants and generalised cross products are equivariant.
    signature : tuple of int or None
        ``eta`` of the bilinear form, ``None`` for Euclidean (identity).

    Build one with :func:`parse_group`. Being a ``str`` keeps ``model.group == "SE3"``, configs
    and checkpoints exactly as they were before other groups existed.
    """

    dim: int
    special: bool
    signature: tuple[int, ...] | None

    def __new__(cls, name: str, dim: int, special: bool, signature: tuple[int, ...] | None = None):
        group = super().__new__(cls, name)
        group.dim, group.special, group.signature = dim, special, signature
        return group

    def __reduce__(self):  # pickle (checkpoints, Ray) as the plain name it parses from
        return parse_group, (str(self),)

    @property
    def euclidean(self) -> bool:
        return self.signature is None

    def lower(self, vectors: Tensor) -> Tensor:
        """``eta v`` over the last dim (the identity, free, for Euclidean groups)."""
        if self.signature is None:
            return vectors
        return vectors * vectors.new_tensor(self.signature)

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """``<a, b> = sum_k eta_k a_k b_k`` over the last dim (broadcasting)."""
        return (self.lower(a) * b).sum(-1)

    def gram(self, vectors: Tensor) -> Tensor:
        """``[..., T, d] -> [..., T, T]`` matrix of ``<v_a, v_b>`` (eq. 8)."""
        return self.lower(vectors) @ vectors.transpose(-1, -2)

    def cross(self, vectors: list[Tensor]) -> Tensor:
        """Generalised cross product of ``d - 1`` vectors ``[..., d]`` (broadcasting), ``[..., d]``.

        Defined by ``<cross(v_1..v_{d-1}), x> = det[v_1, .., v_{d-1}, x]``; equivariant under the
        special group (``d = 3``, Euclidean: ``v_1 x v_2``; ``d = 2``: ``J v_1``, rotated +90 deg).
        """
        return self.lower(cofactor(vectors))  # eta^-1 = eta

    def __repr__(self) -> str:
        return f"Group({str(self)!r}, dim={self.dim}, special={self.special})"


def parse_group(group: str) -> Group:
    """The :class:`Group` a name denotes (case-insensitive; ``"SE(3)"``, ``"se3"``, ``"so+(1,3)"``).

    Canonical names: ``E<d>``/``SE<d>`` (``d >= 2``), ``O(1,<n>)``/``SO+(1,<n>)`` (``n >= 1``).

    Raises
    ------
    ValueError
        For any other name; the message lists the accepted ones.
    """
    if isinstance(group, Group):
        return group
    name = re.sub(r"\s+", "", str(group)).upper()
    found = _EUCLIDEAN.match(name)
    if found and int(found.group(2)) >= 2:
        d, special = int(found.group(2)), found.group(1) == "SE"
        return Group(f"{found.group(1)}{d}", d, special)
    found = _LORENTZ.match(name)
    if found and int(found.group(2)) >= 1:
        n, special = int(found.group(2)), found.group(1) == "SO+"
        return Group(f"{found.group(1)}(1,{n})", n + 1, special, (1,) + (-1,) * n)
    raise ValueError(f"group must be one of {', '.join(GROUP_NAMES)} (d >= 2, e.g. E4, SE5), "
                     f"got {group!r}")


def _promote(vectors: list[Tensor]) -> list[Tensor]:
    """One dtype for all factors (under autocast one may come out of a bf16/fp16 matmul)."""
    dtype = vectors[0].dtype
    for v in vectors[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    return [v.to(dtype) for v in vectors]


def _drop(v: Tensor, k: int) -> Tensor:
    return torch.cat([v[..., :k], v[..., k + 1:]], dim=-1)


def determinant(rows: list[Tensor]) -> Tensor:
    """``det`` of the ``m x m`` matrix with the given rows ``[..., m]`` (broadcasting), ``[...]``.

    Laplace expansion along the first row: a polynomial, so its gradient is exact on singular
    matrices (unlike ``torch.linalg.det``); ``m`` is the space dimension, small.
    """
    rows = _promote(rows)
    m = len(rows)
    if m == 1:
        return rows[0][..., 0]
    if m == 2:
        a, b = rows
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    if m == 3:
        return (rows[0] * torch.linalg.cross(rows[1], rows[2], dim=-1)).sum(-1)
    total = 0
    for k in range(m):
        minor = determinant([_drop(r, k) for r in rows[1:]])
        term = rows[0][..., k] * minor
        total = total + term if k % 2 == 0 else total - term
    return total


def cofactor(vectors: list[Tensor]) -> Tensor:
    """``c`` with ``c . x = det[v_1, .., v_{d-1}, x]`` for ``d - 1`` vectors ``[..., d]``, ``[..., d]``.

    ``d = 2``: ``(-v_1[1], v_1[0])``; ``d = 3``: ``v_1 x v_2``; larger ``d``: signed minors.
    """
    vectors = _promote(vectors)
    d = vectors[0].shape[-1]
    if len(vectors) != d - 1:
        raise ValueError(f"a cofactor of {d}-vectors takes {d - 1} of them, got {len(vectors)}")
    if d == 2:
        v = vectors[0]
        return torch.stack([-v[..., 1], v[..., 0]], dim=-1)
    if d == 3:
        return torch.linalg.cross(vectors[0], vectors[1], dim=-1)
    vectors = torch.broadcast_tensors(*vectors)
    parts = [determinant([_drop(v, k) for v in vectors]) for k in range(d)]
    return torch.stack([p if (d - 1 + k) % 2 == 0 else -p for k, p in enumerate(parts)], dim=-1)
