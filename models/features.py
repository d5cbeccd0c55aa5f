"""The ``(vectors, scalars)`` feature type that flows through every layer.

Paper section 2: each node carries a set of vectors ``{h_t}`` (rotate with the input) and
a set of scalars ``{s_l}`` (invariant). :class:`Features` holds their tensors,
:class:`FeatureShape` their channel counts (like e3nn's ``Irreps`` or the SE(3)-Transformer's
``Fiber``, but with only two kinds of channel).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["FeatureShape", "Features"]


class FeatureShape(NamedTuple):
    """Channel counts of a feature set: ``vectors`` 3D vectors and ``scalars`` scalars.

    Examples
    --------
    >>> FeatureShape(4, 16)
    FeatureShape(4x3d + 16x0d)
    >>> FeatureShape(4, 16).flat_dim
    28
    """

    vectors: int
    scalars: int

    @property
    def flat_dim(self) -> int:
        """Length of the flattened feature ``3 * vectors + scalars`` (eq. 9-10)."""
        return 3 * self.vectors + self.scalars

    def __repr__(self) -> str:
        return f"FeatureShape({self.vectors}x3d + {self.scalars}x0d)"


class Features(NamedTuple):
    """Vector and scalar features of a batch of nodes (or node pairs).

    Attributes
    ----------
    vectors : Tensor, shape ``[..., T, 3]``
        ``T`` vectors per item; rotate as ``v -> v @ R.T``.
    scalars : Tensor, shape ``[..., L]``
        ``L`` rotation-invariant scalars per item.

    Examples
    --------
    >>> f = Features(torch.zeros(2, 5, 4, 3), torch.zeros(2, 5, 16))
    >>> f
    Features(vectors=[2, 5, 4, 3], scalars=[2, 5, 16])
    >>> f.shape
    FeatureShape(4x3d + 16x0d)
    """

    vectors: Tensor
    scalars: Tensor

    @property
    def shape(self) -> FeatureShape:
        """Channel counts ``(T, L)``."""
        return FeatureShape(self.vectors.shape[-2], self.scalars.shape[-1])

    def masked(self, mask: Tensor) -> "Features":
        """Zero the items where ``mask`` ([...] bool) is False.

        ``torch.where`` rather than a product so that NaN/inf in masked items cannot leak.
        """
        return Features(torch.where(mask[..., None, None], self.vectors, 0.0),
                        torch.where(mask[..., None], self.scalars, 0.0))

    def __add__(self, other):  # residual connections; tuple concatenation makes no sense here
        if not isinstance(other, Features):
            return NotImplemented
        return Features(self.vectors + other.vectors, self.scalars + other.scalars)

    def __repr__(self) -> str:
        return (f"Features(vectors={list(self.vectors.shape)}, "
                f"scalars={list(self.scalars.shape)})")
