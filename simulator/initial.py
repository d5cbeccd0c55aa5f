"""Seeded initial conditions: simulation k of a split depends only on (seed, split, k)."""
from __future__ import annotations

import zlib

import numpy as np

__all__ = ["initial_conditions", "simulation_rng"]


def simulation_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Generator for simulation ``index`` of ``split``: ``SeedSequence(seed, spawn_key=(crc32(split), index))``.

    One stream per simulation (not per block or per worker) is what makes a dataset
    identical whatever the number of threads, shards or processes that produced it, and
    the split name in the key keeps train and test disjoint for the same ``seed``.
    """
    key = zlib.crc32(split.encode("utf-8"))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(key, index))))


def initial_conditions(seed: int, split: str, start: int, stop: int, n_bodies: int, dim: int,
                       loc_std: float = 1.0, vel_norm: float = 0.5):
    """Initial states of simulations ``start .. stop-1`` of a split (NRI charged-particle priors).

    Charges are +-1 with equal probability, positions ``N(0, loc_std^2)`` per coordinate,
    velocities of norm ``vel_norm`` in uniformly random directions (a normalized Gaussian).

    Parameters
    ----------
    seed : int
        Dataset seed (>= 0).
    split : str
        Split name (``"train"``, ``"test"``, ...); enters the stream key.
    start, stop : int
        Simulation index range within the split.
    n_bodies, dim : int
        Bodies per simulation and spatial dimension.
    loc_std, vel_norm : float
        Position standard deviation and speed (length units, length per time unit).

    Returns
    -------
    positions, velocities : ndarray float64, shape [stop - start, n_bodies, dim]
    charges : ndarray float64, shape [stop - start, n_bodies]

    Examples
    --------
    >>> x, v, q = initial_conditions(0, "train", 10, 12, n_bodies=5, dim=3)
    >>> x.shape, q.shape
    ((2, 5, 3), (2, 5))
    """
    count = stop - start
    positions = np.empty((count, n_bodies, dim))
    velocities = np.empty((count, n_bodies, dim))
    charges = np.empty((count, n_bodies))
    for row, index in enumerate(range(start, stop)):
        rng = simulation_rng(seed, split, index)
        charges[row] = np.where(rng.random(n_bodies) < 0.5, -1.0, 1.0)
        positions[row] = rng.standard_normal((n_bodies, dim)) * loc_std
        direction = rng.standard_normal((n_bodies, dim))
        norm = np.linalg.norm(direction, axis=-1, keepdims=True)
        velocities[row] = direction * (vel_norm / norm)
    return positions, velocities, charges
