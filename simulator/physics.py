"""Charged N-body dynamics: the Numba kernels behind :func:`simulator.simulate`.

Semantics are those of the NRI generator (Kipf et al. 2018, ``ChargedParticlesSim``), which
the paper's N-body dataset extends to 3D (DESIGN section 4):

* unit masses, charges ``q``; force on body i: ``F_i = sum_j q_i q_j (x_i - x_j) / |x_i - x_j|^3``;
  each component of the total force ``F_i`` is clipped to ``+-0.1/dt`` (as in NRI);
* reflect the initial state off the walls, kick ``v += dt F(x)``; then for steps
  ``i = 1 .. n_steps-1``: drift ``x += dt v``, reflect off the walls at ``+-box_size``
  (position mirrored, that velocity component pointed inward), record ``(x, v)`` when
  ``i % sample_freq == 0``, kick.  Frames are steps ``sample_freq, 2 sample_freq, ...``:
  ``n_steps // sample_freq - 1`` of them.  Steps after the last frame change nothing that is
  returned, so they are not computed.

Energies (unit masses, unit coupling): kinetic ``0.5 sum_i |v_i|^2`` and potential
``sum_{i<j} q_i q_j / |x_i - x_j|``, evaluated on the recorded ``(x, v)``.

Layout: a thread integrates a *group* of ``lanes`` simulations in lock step, stored as
``[n_bodies, dim, lanes]``, so that the innermost loops run over independent simulations and
compile to SIMD instructions.  Every lane does exactly the scalar arithmetic of one
simulation in a fixed order (no cross-lane operation, no fast-math reassociation), so a
simulation's result is bitwise the same whatever the number of lanes, threads or shards.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# fastmath stays off: it would let LLVM reorder sums (results would depend on the lane
# count) and assume no NaN (a broken simulation must stay NaN so that it is reported).
# Numba's on-disk cache (cache=True, __pycache__/*.nbi/.nbc) is keyed on this file's mtime and
# size, not on the module's name, and a cached kernel imports the module it was compiled in:
# a cache built before the invattn namespace (module `simulator.physics`) failed in every new
# process with "No module named 'simulator'".  Editing this file (this comment) invalidates such
# caches; edit it again if the module is ever renamed.
_JIT = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

#: Simulations per group.  32 keeps a group's state in L1 for the paper's 5 bodies and makes
#: the vector loops long enough to hide their set-up cost; fewer lanes are used when there
#: are too few simulations to give every thread a group.
MAX_LANES = 32


@njit(inline="always", **_JIT)
def _reflect(x, v, box):
    """Mirror coordinates beyond ``+-box`` back inside and point that velocity inward."""
    n, d, nl = x.shape
    for i in range(n):
        for k in range(d):
            for w in range(nl):
                xx = x[i, k, w]
                vv = v[i, k, w]
                # NRI order: the upper wall first, then the lower one (selects, so it vectorizes)
                over = xx > box
                xx = 2.0 * box - xx if over else xx
                vv = -abs(vv) if over else vv
                under = xx < -box
                xx = -2.0 * box - xx if under else xx
                vv = abs(vv) if under else vv
                x[i, k, w] = xx
                v[i, k, w] = vv


@njit(inline="always", **_JIT)
def _forces(x, q, f, max_force, tmp):
    """Clipped Coulomb forces ``f [N, D, lanes]``; each pair once (Newton's third law).

    ``tmp [D, lanes]`` is scratch.  The pair term goes through ``tmp`` so that every loop
    writes a single array, which lets LLVM vectorize it behind a cheap overlap check.
    """
    n, d, nl = x.shape
    f[:] = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            if d == 3:  # the paper's case, fused into one pass over the lanes
                for w in range(nl):
                    d0 = x[i, 0, w] - x[j, 0, w]
                    d1 = x[i, 1, w] - x[j, 1, w]
                    d2 = x[i, 2, w] - x[j, 2, w]
                    r2 = d0 * d0 + d1 * d1 + d2 * d2
                    s = q[i, w] * q[j, w] / (r2 * np.sqrt(r2))
                    tmp[0, w] = s * d0
                    tmp[1, w] = s * d1
                    tmp[2, w] = s * d2
            else:
                r2 = tmp[d]
                for w in range(nl):
                    r2[w] = 0.0
                for k in range(d):
                    for w in range(nl):
                        dk = x[i, k, w] - x[j, k, w]
                        r2[w] += dk * dk
                for w in range(nl):
                    r2[w] = q[i, w] * q[j, w] / (r2[w] * np.sqrt(r2[w]))
                for k in range(d):
                    for w in range(nl):
                        tmp[k, w] = r2[w] * (x[i, k, w] - x[j, k, w])
            for k in range(d):
                for w in range(nl):
                    f[i, k, w] += tmp[k, w]
                    f[j, k, w] -= tmp[k, w]
    for i in range(n):
        for k in range(d):
            for w in range(nl):
                # NaN compares false on both sides and passes through: a broken state stays visible.
                fk = f[i, k, w]
                fk = max_force if fk > max_force else fk
                fk = -max_force if fk < -max_force else fk
                f[i, k, w] = fk


@njit(inline="always", **_JIT)
def _energy(x, v, q):
    """(kinetic, potential) of one state ``x, v [N, D]``, charges ``q [N]``."""
    n, d = x.shape
    kinetic = 0.0
    for i in range(n):
        for k in range(d):
            kinetic += v[i, k] * v[i, k]
    potential = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            r2 = 0.0
            for k in range(d):
                dk = x[i, k] - x[j, k]
                r2 += dk * dk
            potential += q[i] * q[j] / np.sqrt(r2)
    return 0.5 * kinetic, potential


@njit(parallel=True, **_JIT)
def simulate_kernel(x0, v0, q0, n_steps, sample_freq, dt, box, lanes,
                    out_x, out_v, out_ke, out_pe):
    """Integrate ``x0, v0 [S, N, D]`` with charges ``q0 [S, N]`` into the ``out_*`` arrays.

    ``out_x, out_v [S, F, N, D]``, ``out_ke, out_pe [S, F]`` with ``F = n_steps//sample_freq - 1``;
    ``box <= 0`` means no walls.  Inputs are trusted (see :func:`simulator.simulate`).
    """
    n_sims, n, d = x0.shape
    n_frames = out_x.shape[1]
    max_force = 0.1 / dt
    last_step = n_frames * sample_freq  # later steps never reach a recorded frame
    n_groups = (n_sims + lanes - 1) // lanes
    for g in prange(n_groups):
        x = np.empty((n, d, lanes))
        v = np.empty((n, d, lanes))
        f = np.empty((n, d, lanes))
        q = np.empty((n, lanes))
        tmp = np.empty((d + 1, lanes))
        xs = np.empty((n, d))
        vs = np.empty((n, d))
        for w in range(lanes):
            s = min(g * lanes + w, n_sims - 1)  # a short last group repeats its last simulation
            for i in range(n):
                q[i, w] = q0[s, i]
                for k in range(d):
                    x[i, k, w] = x0[s, i, k]
                    v[i, k, w] = v0[s, i, k]
        if box > 0.0:
            _reflect(x, v, box)
        _forces(x, q, f, max_force, tmp)
        for i in range(n):
            for k in range(d):
                for w in range(lanes):
                    v[i, k, w] += dt * f[i, k, w]
        frame = 0
        for step in range(1, last_step + 1):
            for i in range(n):
                for k in range(d):
                    for w in range(lanes):
                        x[i, k, w] += dt * v[i, k, w]
            if box > 0.0:
                _reflect(x, v, box)
            if step % sample_freq == 0:
                for w in range(lanes):
                    s = g * lanes + w
                    if s < n_sims:
                        for i in range(n):
                            for k in range(d):
                                xs[i, k] = x[i, k, w]
                                vs[i, k] = v[i, k, w]
                        out_x[s, frame] = xs
                        out_v[s, frame] = vs
                        out_ke[s, frame], out_pe[s, frame] = _energy(xs, vs, q0[s])
                frame += 1
                if step == last_step:
                    break
            _forces(x, q, f, max_force, tmp)
            for i in range(n):
                for k in range(d):
                    for w in range(lanes):
                        v[i, k, w] += dt * f[i, k, w]


@njit(parallel=True, **_JIT)
def energy_kernel(x, v, q, out_ke, out_pe):
    """Energies of ``x, v [S, F, N, D]``, ``q [S, N]`` into ``out_ke, out_pe [S, F]``."""
    n_sims, n_frames = x.shape[0], x.shape[1]
    for s in prange(n_sims):
        for t in range(n_frames):
            out_ke[s, t], out_pe[s, t] = _energy(x[s, t], v[s, t], q[s])
