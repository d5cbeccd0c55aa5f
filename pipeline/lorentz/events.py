"""A small seeded generator of particle-decay events: sets of four-momenta with a Lorentz-invariant
target (issue 12, docs/lorentz.md).

Each event holds the three decay products of a parent of mass ``M`` and ``background`` unrelated
massless particles, in random order. The parent decays in two steps, ``P -> a X``, ``X -> b c``
(isotropic two-body decays in each rest frame, ``X``'s mass uniform in the allowed range), and
moves in the lab with a rapidity up to ``max_rapidity`` in a random direction. Each particle's
label says whether it is a decay product; the target is ``M``, the invariant mass of the labelled
particles, ``M^2 = <p_a + p_b + p_c, p_a + p_b + p_c>`` with the Minkowski form
``diag(+1, -1, -1, -1)`` (units with ``c = 1``; energies of order 1).

A network that is not Lorentz invariant learns ``M`` only for the frames it saw;
:func:`random_boosts` moves whole events to other frames (rapidity up to 2) to test that.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Events", "make_events", "random_boosts", "boosted", "invariant_mass", "boost_matrices"]

F64 = torch.float64


class Events(NamedTuple):
    """``momenta [n, N, 4]`` (E, px, py, pz), ``labels [n, N, 1]`` (1 = decay product), ``mass [n]``."""

    momenta: Tensor
    labels: Tensor
    mass: Tensor


def _directions(n: int, gen: torch.Generator) -> Tensor:
    v = torch.randn(n, 3, generator=gen, dtype=F64)
    return v / v.norm(dim=-1, keepdim=True)


def _two_body(mass: Tensor, m1: Tensor, m2: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Four-momenta ``[n, 4]`` of an isotropic decay ``mass -> m1 m2`` in the parent's rest frame."""
    p = torch.sqrt((mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)).div(2 * mass)
    n = _directions(mass.shape[0], gen) * p[:, None]
    first = torch.cat([torch.sqrt(m1**2 + p**2)[:, None], n], -1)
    second = torch.cat([torch.sqrt(m2**2 + p**2)[:, None], -n], -1)
    return first, second


def boost_matrices(direction: Tensor, rapidity: Tensor) -> Tensor:
    """Pure boosts ``[n, 4, 4]`` along unit 3-vectors ``direction [n, 3]`` by ``rapidity [n]``."""
    ch, sh = torch.cosh(rapidity), torch.sinh(rapidity)
    out = torch.eye(4, dtype=direction.dtype).repeat(direction.shape[0], 1, 1)
    out[:, 0, 0] = ch
    out[:, 0, 1:] = out[:, 1:, 0] = sh[:, None] * direction
    out[:, 1:, 1:] += (ch - 1.0)[:, None, None] * direction[:, :, None] * direction[:, None, :]
    return out


def _boost_to_rest_frame_of(momenta: Tensor, parent: Tensor) -> Tensor:
    """Boost ``momenta [n, k, 4]`` from ``parent [n, 4]``'s rest frame to the frame where it has ``parent``."""
    mass = torch.sqrt((parent[:, 0] ** 2 - parent[:, 1:].pow(2).sum(-1)).clamp(min=1e-300))
    p = parent[:, 1:].norm(dim=-1)
    direction = torch.where(p[:, None] > 0, parent[:, 1:] / p.clamp(min=1e-300)[:, None], 0.0)
    lam = boost_matrices(direction, torch.asinh(p / mass))
    return momenta @ lam.transpose(-1, -2)


def invariant_mass(momenta: Tensor) -> Tensor:
    """``sqrt(<P, P>)`` of the sum ``P`` of ``momenta [..., k, 4]`` over ``k`` (Minkowski form)."""
    total = momenta.sum(-2)
    return torch.sqrt((total[..., 0] ** 2 - total[..., 1:].pow(2).sum(-1)).clamp(min=0.0))


def make_events(n: int, seed: int, background: int = 3, max_rapidity: float = 0.5,
                mass_range: tuple[float, float] = (1.0, 3.0), product_mass: float = 0.1) -> Events:
    """``n`` events from the seeded generator described in the module docstring.

    Raises
    ------
    ValueError
        On ``n < 1``, ``background < 0``, a negative rapidity, or a mass range that cannot hold
        three products of ``product_mass``.
    """
    low, high = (float(m) for m in mass_range)
    if n < 1 or background < 0 or max_rapidity < 0:
        raise ValueError(f"need n >= 1, background >= 0, max_rapidity >= 0 (got {n}, {background}, {max_rapidity})")
    if not 3 * product_mass < low <= high:
        raise ValueError(f"mass_range {mass_range} must satisfy 3 * product_mass ({3 * product_mass}) < low <= high")
    gen = torch.Generator().manual_seed(int(seed))
    mass = low + (high - low) * torch.rand(n, generator=gen, dtype=F64)
    m = torch.full((n,), float(product_mass), dtype=F64)
    x_mass = 2 * m + (mass - 3 * m) * torch.rand(n, generator=gen, dtype=F64).clamp(0.01, 0.99)
    a, x = _two_body(mass, m, x_mass, gen)  # parent rest frame
    b, c = _two_body(x_mass, m, m, gen)  # X rest frame
    b, c = _boost_to_rest_frame_of(torch.stack([b, c], 1), x).unbind(1)
    products = torch.stack([a, b, c], 1)  # [n, 3, 4] in the parent's rest frame
    rapidity = max_rapidity * torch.rand(n, generator=gen, dtype=F64)
    lab = boost_matrices(_directions(n, gen), rapidity)
    products = products @ lab.transpose(-1, -2)
    energy = -0.7 * torch.log(torch.rand(n, background, generator=gen, dtype=F64).clamp(min=1e-12))  # mean 0.7
    spatial = _directions(n * background, gen).reshape(n, background, 3) * energy[..., None]
    others = torch.cat([energy[..., None], spatial], -1)  # massless
    momenta = torch.cat([products, others], 1)
    labels = torch.cat([torch.ones(n, 3, 1, dtype=F64), torch.zeros(n, background, 1, dtype=F64)], 1)
    order = torch.argsort(torch.rand(n, 3 + background, generator=gen), dim=1)  # sets: no fixed order
    momenta = momenta.gather(1, order[..., None].expand(-1, -1, 4))
    labels = labels.gather(1, order[..., None])
    return Events(momenta, labels, mass)


def random_boosts(n: int, seed: int, max_rapidity: float = 2.0) -> Tensor:
    """``n`` Lorentz transformations ``[n, 4, 4]``: rotation, boost of rapidity in
    ``[0, max_rapidity]`` along a random direction, rotation (proper, orthochronous)."""
    gen = torch.Generator().manual_seed(int(seed))

    def rotations():
        q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=F64))
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        q[torch.linalg.det(q) < 0, :, 0] *= -1
        out = torch.eye(4, dtype=F64).repeat(n, 1, 1)
        out[:, 1:, 1:] = q
        return out

    rapidity = max_rapidity * torch.rand(n, generator=gen, dtype=F64)
    return rotations() @ boost_matrices(_directions(n, gen), rapidity) @ rotations()


def boosted(events: Events, seed: int, max_rapidity: float = 2.0) -> Events:
    """The same events seen from randomly boosted frames (same masses, same labels)."""
    lam = random_boosts(events.momenta.shape[0], seed, max_rapidity)
    return Events(events.momenta @ lam.transpose(-1, -2), events.labels, events.mass)

