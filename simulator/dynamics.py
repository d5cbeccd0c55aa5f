"""Public entry points :func:`simulate` and :func:`energies` (input checks around the kernels)."""
from __future__ import annotations

import math

import numba
import numpy as np

from invattn.checks import check_int, is_number
from invattn.simulator.physics import MAX_LANES, energy_kernel, simulate_kernel

__all__ = ["simulate", "energies", "NonFiniteSimulationError", "n_frames_for"]


class NonFiniteSimulationError(ValueError):
    """A simulation produced NaN or infinity (e.g. two bodies at the same position).

    ``indices`` holds the offending simulation indices (into the batch that was passed).
    """

    def __init__(self, message: str, indices):
        super().__init__(message)
        self.indices = [int(i) for i in indices]


def _check_int(name: str, value, minimum: int) -> int:
    value = check_int(name, value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def n_frames_for(n_steps: int, sample_freq: int) -> int:
    """Number of recorded frames, ``n_steps // sample_freq - 1``, after checking both.

    Raises
    ------
    ValueError
        ``n_steps`` or ``sample_freq`` not a positive integer, ``n_steps`` not a multiple of
        ``sample_freq``, or fewer than ``2 * sample_freq`` steps (no frame at all).
    """
    sample_freq = _check_int("sample_freq", sample_freq, 1)
    n_steps = _check_int("n_steps", n_steps, 1)
    if n_steps % sample_freq:
        raise ValueError(f"n_steps ({n_steps}) must be a multiple of sample_freq ({sample_freq})")
    if n_steps // sample_freq < 2:
        raise ValueError(f"n_steps ({n_steps}) must be at least 2 * sample_freq "
                         f"({2 * sample_freq}) to record one frame")
    return n_steps // sample_freq - 1


def _check_float(name: str, value, allow_zero: bool) -> float:
    if not is_number(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def _as_array(name: str, value, ndim: int, shape_doc: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    bad = ~np.isfinite(arr).all(axis=tuple(range(1, arr.ndim)))
    if bad.any():
        raise ValueError(f"{name} holds non-finite values (simulation {int(np.flatnonzero(bad)[0])})")
    return arr


def _validate_states(positions, velocities, charges):
    x = _as_array("positions", positions, 3, "[n_sims, n_bodies, dim]")
    v = _as_array("velocities", velocities, 3, "[n_sims, n_bodies, dim]")
    q = _as_array("charges", charges, 2, "[n_sims, n_bodies]")
    if v.shape != x.shape:
        raise ValueError(f"velocities shape {v.shape} must equal positions shape {x.shape}")
    if q.shape != x.shape[:2]:
        raise ValueError(f"charges shape {q.shape} must be [n_sims, n_bodies] = {x.shape[:2]}")
    if x.shape[1] < 2:
        raise ValueError(f"n_bodies must be >= 2 (positions has shape {x.shape})")
    if x.shape[2] < 1:
        raise ValueError(f"dim must be >= 1 (positions has shape {x.shape})")
    return x, v, q


def simulate(positions, velocities, charges, *, n_steps: int, sample_freq: int,
             dt: float = 1e-3, box_size: float | None = 5.0, return_energy: bool = False):
    """Simulate charged particles (NRI / paper section 3 semantics, DESIGN section 4).

    Unit masses; the force on body i is ``sum_j q_i q_j (x_i - x_j) / |x_i - x_j|^3`` with each
    component clipped to ``+-0.1/dt``; kick-drift integration with wall reflections; a frame
    is recorded every ``sample_freq`` steps starting at step ``sample_freq``.  Runs in
    parallel over simulations on all Numba threads (``numba.set_num_threads``); a
    simulation's result does not depend on the thread count or on the other simulations.

    Parameters
    ----------
    positions, velocities : array_like, shape [n_sims, n_bodies, dim]
        Initial state (any dim >= 1; 2 and 3 are the usual ones), converted to float64.
    charges : array_like, shape [n_sims, n_bodies]
        Charges (the datasets use +-1).
    n_steps : int
        Integration steps; a multiple of ``sample_freq`` and at least ``2 * sample_freq``.
    sample_freq : int
        Steps between recorded frames.
    dt : float
        Time step (> 0).  Also sets the force clip ``0.1 / dt``.
    box_size : float or None
        Walls at ``+-box_size`` in every coordinate; ``None`` or ``0`` means no walls.  With
        walls, initial positions must lie within ``+-3 box_size`` (one reflection brings them in).
    return_energy : bool
        Also return the kinetic and potential energy of every recorded frame.

    Returns
    -------
    positions, velocities : ndarray, shape [n_sims, n_steps // sample_freq - 1, n_bodies, dim]
        float64 states at steps ``sample_freq, 2 sample_freq, ...``.
    kinetic_energy, potential_energy : ndarray, shape [n_sims, n_frames]
        Only with ``return_energy=True``: ``0.5 sum_i |v_i|^2`` and ``sum_{i<j} q_i q_j / r_ij``.

    Raises
    ------
    ValueError
        Bad argument (the message names it): shapes that disagree, fewer than 2 bodies,
        non-finite inputs, ``n_steps``/``sample_freq`` inconsistent, ``dt <= 0``,
        ``box_size < 0``, initial positions outside ``+-3 box_size``.
    NonFiniteSimulationError
        (a ValueError) some simulation produced NaN/inf, e.g. two bodies at the same place;
        the message and ``.indices`` give the simulation indices.

    Notes
    -----
    The kernel is compiled once and cached on disk (``simulator/__pycache__``; the first
    call in a fresh checkout takes ~20 s).  Calling :func:`simulate` from several Python
    threads at once (e.g. Dask threads) needs a thread-safe Numba threading layer
    (``NUMBA_THREADING_LAYER=omp`` or ``tbb``) and a bounded ``NUMBA_NUM_THREADS``
    (DESIGN section 8); separate processes need nothing.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, v = rng.normal(size=(2, 4, 5, 3))
    >>> q = rng.choice([-1.0, 1.0], size=(4, 5))
    >>> pos, vel = simulate(x, v, q, n_steps=1000, sample_freq=100)
    >>> pos.shape
    (4, 9, 5, 3)
    """
    n_frames = n_frames_for(n_steps, sample_freq)
    dt = _check_float("dt", dt, allow_zero=False)
    box = 0.0 if box_size is None else _check_float("box_size", box_size, allow_zero=True)
    x, v, q = _validate_states(positions, velocities, charges)
    if box > 0:
        outside = (np.abs(x) > 3 * box).any(axis=(1, 2))
        if outside.any():
            raise ValueError(f"positions must lie within +-3*box_size = +-{3 * box} "
                             f"(simulation {int(np.flatnonzero(outside)[0])} does not)")
    n_sims, n_bodies, dim = x.shape
    out_x = np.empty((n_sims, n_frames, n_bodies, dim))
    out_v = np.empty_like(out_x)
    out_ke = np.empty((n_sims, n_frames))
    out_pe = np.empty_like(out_ke)
    if n_sims:
        # Give every thread at least one group; lanes never change the numbers, only speed.
        lanes = max(1, min(MAX_LANES, -(-n_sims // numba.get_num_threads())))
        simulate_kernel(x, v, q, int(n_steps), int(sample_freq), dt, box, lanes,
                        out_x, out_v, out_ke, out_pe)
        bad = np.flatnonzero(~(np.isfinite(out_x).all(axis=(1, 2, 3))
                               & np.isfinite(out_v).all(axis=(1, 2, 3))))
        if bad.size:
            shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if bad.size > 10 else "")
            raise NonFiniteSimulationError(
                f"{bad.size} simulation(s) produced non-finite positions or velocities "
                f"(index {shown}); bodies at the same position give infinite forces", bad)
    if return_energy:
        return out_x, out_v, out_ke, out_pe
    return out_x, out_v


def energies(positions, velocities, charges):
    """Kinetic and potential energy of each frame (unit masses and coupling).

    Parameters
    ----------
    positions, velocities : array_like, shape [n_sims, n_frames, n_bodies, dim]
    charges : array_like, shape [n_sims, n_bodies]

    Returns
    -------
    kinetic_energy, potential_energy : ndarray, shape [n_sims, n_frames]
        ``0.5 sum_i |v_i|^2`` and ``sum_{i<j} q_i q_j / |x_i - x_j|``; the total energy is
        their sum (conserved by the dynamics without walls and clipping, up to O(dt)).

    Raises
    ------
    ValueError
        Shapes that disagree or non-real input.
    """
    x = np.ascontiguousarray(positions, dtype=np.float64)
    v = np.ascontiguousarray(velocities, dtype=np.float64)
    q = np.ascontiguousarray(charges, dtype=np.float64)
    if x.ndim != 4 or v.shape != x.shape or q.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"energies expects positions, velocities [n_sims, n_frames, n_bodies, dim] "
                         f"and charges [n_sims, n_bodies]; got {x.shape}, {v.shape}, {q.shape}")
    ke = np.empty(x.shape[:2])
    pe = np.empty(x.shape[:2])
    energy_kernel(x, v, q, ke, pe)
    return ke, pe
