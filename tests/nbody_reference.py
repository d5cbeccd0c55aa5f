"""Straightforward NumPy implementation of the charged N-body semantics (DESIGN section 4).

A line-by-line transcription of the NRI generator (Kipf et al. 2018, ``ChargedParticlesSim``
in ``data/synthetic_sim.py``), vectorized over bodies and, optionally, over simulations.
The tests use it as the independent reference for :func:`simulator.simulate`, and
``benchmarks/simulator.py`` as the NumPy baseline.  It deliberately shares no code with
``simulator/``.
"""
from __future__ import annotations

import numpy as np


def reference_forces(x: np.ndarray, q: np.ndarray, max_force: float) -> tuple[np.ndarray, float]:
    """Total force ``[S, N, D]`` on each body, each component clipped to ``+-max_force``.

    Also returns the largest unclipped force component (to tell whether clipping was active).
    """
    diff = x[:, :, None, :] - x[:, None, :, :]            # x_i - x_j, [S, N, N, D]
    r2 = (diff ** 2).sum(axis=-1)
    n = x.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        size = q[:, :, None] * q[:, None, :] / r2 ** 1.5   # q_i q_j / |x_i - x_j|^3
    size[:, np.arange(n), np.arange(n)] = 0.0
    force = (size[..., None] * diff).sum(axis=2)
    peak = float(np.nanmax(np.abs(force))) if force.size else 0.0
    return np.clip(force, -max_force, max_force), peak


def reference_reflect(x: np.ndarray, v: np.ndarray, box: float | None) -> None:
    """Mirror positions at the walls ``+-box`` and point the velocity inward (in place)."""
    if not box:
        return
    over = x > box
    x[over] = 2 * box - x[over]
    v[over] = -np.abs(v[over])
    under = x < -box
    x[under] = -2 * box - x[under]
    v[under] = np.abs(v[under])


def reference_simulate(positions, velocities, charges, n_steps, sample_freq, dt=1e-3,
                       box_size=5.0, return_info=False):
    """NRI-style kick-drift loop; returns positions, velocities ``[S, n_steps//sample_freq - 1, N, D]``.

    With ``return_info=True`` also returns ``{"max_force": largest unclipped component}``.
    """
    x = np.array(positions, dtype=np.float64)
    v = np.array(velocities, dtype=np.float64)
    q = np.asarray(charges, dtype=np.float64)
    n_frames = n_steps // sample_freq - 1
    out_x = np.zeros((x.shape[0], n_frames) + x.shape[1:])
    out_v = np.zeros_like(out_x)
    max_force = 0.1 / dt
    reflect_box = box_size if box_size else None
    reference_reflect(x, v, reflect_box)
    force, peak = reference_forces(x, q, max_force)
    v += dt * force
    frame = 0
    for step in range(1, n_steps):
        x += dt * v
        reference_reflect(x, v, reflect_box)
        if step % sample_freq == 0:
            out_x[:, frame], out_v[:, frame] = x, v
            frame += 1
        force, p = reference_forces(x, q, max_force)
        peak = max(peak, p)
        v += dt * force
    if return_info:
        return out_x, out_v, {"max_force": peak}
    return out_x, out_v


def reference_energies(positions, velocities, charges):
    """Kinetic ``0.5 sum v^2`` and potential ``sum_{i<j} q_i q_j / r_ij``, shape ``[S, F]``."""
    x = np.asarray(positions, dtype=np.float64)
    v = np.asarray(velocities, dtype=np.float64)
    q = np.asarray(charges, dtype=np.float64)
    kinetic = 0.5 * (v ** 2).sum(axis=(-1, -2))
    n = x.shape[-2]
    potential = np.zeros(x.shape[:-2])
    for i in range(n):
        for j in range(i + 1, n):
            r = np.sqrt(((x[..., i, :] - x[..., j, :]) ** 2).sum(axis=-1))
            potential += (q[:, i] * q[:, j])[:, None] / r
    return kinetic, potential
