"""The Numba simulator against a NumPy transcription of the same semantics, and physics checks."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from nbody_reference import reference_energies, reference_simulate
from invattn.simulator import NonFiniteSimulationError, energies, initial_conditions, simulate


def _random_states(rng, n_sims, n_bodies, dim):
    x = rng.normal(size=(n_sims, n_bodies, dim))
    v = rng.normal(size=(n_sims, n_bodies, dim))
    v *= 0.5 / np.linalg.norm(v, axis=-1, keepdims=True)
    q = rng.choice([-1.0, 1.0], size=(n_sims, n_bodies))
    return x, v, q


def _edge_cases(dim):
    """Two states that exercise the walls and the force clip within the first frames."""
    x = np.zeros((2, 5, dim))
    v = np.zeros((2, 5, dim))
    x[:, :, 0] = [-2.0, -1.0, 0.0, 1.0, 2.0]
    x[0, 4, :] = 4.95            # near the upper wall in every coordinate, flying outward
    v[0, 4, :] = 3.0
    x[0, 0, :] = -4.9            # near the lower wall, flying outward
    v[0, 0, :] = -2.0
    x[1, 1] = x[1, 2] + 0.04     # a close pair: |F| ~ 1/0.04^2 = 625 > 0.1/dt = 100
    q = np.array([[1.0, -1.0, 1.0, -1.0, 1.0], [1.0, 1.0, 1.0, -1.0, -1.0]])
    return x, v, q


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("box_size", [5.0, None])
def test_matches_numpy_reference_frame_by_frame(dim, box_size):
    rng = np.random.default_rng(dim * 10 + (box_size is None))
    x, v, q = _random_states(rng, 6, 5, dim)
    ex, ev, eq = _edge_cases(dim)
    x, v, q = np.concatenate([x, ex]), np.concatenate([v, ev]), np.concatenate([q, eq])
    kw = dict(n_steps=1200, sample_freq=100, dt=1e-3, box_size=box_size)
    pos, vel, ke, pe = simulate(x, v, q, return_energy=True, **kw)
    ref_pos, ref_vel, info = reference_simulate(x, v, q, return_info=True, **kw)
    assert pos.shape == ref_pos.shape == (8, 11, 5, dim)
    assert info["max_force"] > 0.1 / 1e-3, "the edge cases must exercise the force clip"
    if box_size:
        assert np.abs(ref_pos).max() <= box_size and (ref_vel[6, 0, 4] < 0).all(), \
            "the edge cases must bounce off the walls"
    # Chaotic dynamics amplify rounding differences (summation order), so the tight check
    # covers the first frames; later frames only need to stay close.
    np.testing.assert_allclose(pos[:, :6], ref_pos[:, :6], rtol=0, atol=1e-9)
    np.testing.assert_allclose(vel[:, :6], ref_vel[:, :6], rtol=0, atol=1e-9)
    np.testing.assert_allclose(pos[:, :3], ref_pos[:, :3], rtol=0, atol=1e-12)
    ref_ke, ref_pe = reference_energies(pos, vel, q)
    np.testing.assert_allclose(ke, ref_ke, rtol=1e-12)
    np.testing.assert_allclose(pe, ref_pe, rtol=1e-12, atol=1e-12)
    ke2, pe2 = energies(pos, vel, q)
    np.testing.assert_array_equal(ke2, ke)
    np.testing.assert_array_equal(pe2, pe)


def test_paper_horizon_agrees_with_reference_on_typical_states():
    """Paper settings, 2000 steps: random (not hand-made) states stay close to the reference."""
    x, v, q = initial_conditions(3, "train", 0, 16, n_bodies=5, dim=3)
    kw = dict(n_steps=2000, sample_freq=100, dt=1e-3, box_size=5.0)
    pos, vel = simulate(x, v, q, **kw)
    ref_pos, ref_vel = reference_simulate(x, v, q, **kw)
    err = np.abs(pos - ref_pos).max(axis=(0, 2, 3))
    assert err[:10].max() < 1e-8, err


def _separated_states(rng, n_sims, dim, spacing=2.0):
    """Bodies on a jittered lattice: far apart, so the force clip never triggers."""
    n = 5
    base = np.zeros((n, dim))
    base[:, 0] = spacing * (np.arange(n) - 2)
    base[:, 1] = spacing * np.array([0.0, 1.0, 0.0, -1.0, 0.5])
    x = base + 0.1 * rng.normal(size=(n_sims, n, dim))
    v = rng.normal(size=(n_sims, n, dim))
    v *= 0.5 / np.linalg.norm(v, axis=-1, keepdims=True)
    q = rng.choice([-1.0, 1.0], size=(n_sims, n))
    return x, v, q


def test_energy_is_conserved_without_walls_and_clipping():
    rng = np.random.default_rng(5)
    x, v, q = _separated_states(rng, 8, 3, spacing=1.5)
    pos, vel, ke, pe = simulate(x, v, q, return_energy=True, n_steps=10000, sample_freq=500,
                                dt=1e-4, box_size=None)
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    closest = min(np.linalg.norm(pos[:, :, i] - pos[:, :, j], axis=-1).min() for i, j in pairs)
    assert closest > 0.5  # |F| <= 4 / 0.5^2, far below the clip 0.1/dt = 1000
    total = ke + pe
    drift = np.abs(total - total[:, :1]).max(axis=1) / np.abs(total[:, 0])
    exchange = np.abs(ke - ke[:, :1]).max(axis=1) / np.abs(total[:, 0])
    assert drift.max() < 5e-4, drift
    # Not a vacuous check: kinetic and potential energy really trade places.
    assert (exchange > 100 * drift).all(), (exchange, drift)
    # First-order integrator (recorded velocities lag half a step): half the dt, half the error.
    _, _, ke_h, pe_h = simulate(x, v, q, return_energy=True, n_steps=20000, sample_freq=1000,
                                dt=5e-5, box_size=None)
    drift_h = np.abs((ke_h + pe_h) - (ke_h + pe_h)[:, :1]).max(axis=1) / np.abs(total[:, 0])
    np.testing.assert_allclose(drift_h / drift, 0.5, atol=0.1)


def _random_orthogonal(rng, dim):
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))  # Haar-distributed; det +1 or -1 (rotations and reflections)


@pytest.mark.parametrize("dim", [2, 3])
def test_dynamics_equivariant_without_walls(dim):
    """sim(R x + t, R v) == R sim(x, v) + t, and permuting bodies permutes the output."""
    rng = np.random.default_rng(11 + dim)
    x, v, q = _separated_states(rng, 1, dim)
    n_rot = 24
    rots = np.stack([_random_orthogonal(rng, dim) for _ in range(n_rot)])
    assert (np.linalg.det(rots) < 0).any() and (np.linalg.det(rots) > 0).any()
    shift = rng.normal(size=(n_rot, 1, dim)) * 3.0
    perm = rng.permutation(5)
    xs = np.concatenate([x, x @ rots.transpose(0, 2, 1) + shift, x[:, perm]])
    vs = np.concatenate([v, v @ rots.transpose(0, 2, 1), v[:, perm]])
    qs = np.concatenate([np.repeat(q, n_rot + 1, axis=0), q[:, perm]])
    kw = dict(n_steps=1100, sample_freq=100, dt=1e-3, box_size=None)
    pos, vel = simulate(xs, vs, qs, **kw)
    _, _, info = reference_simulate(x, v, q, return_info=True, **kw)
    assert info["max_force"] < 0.1 / 1e-3, "clipping is per component and breaks the symmetry"
    want_pos = np.einsum("rij,fnj->rfni", rots, pos[0]) + shift[:, None]
    want_vel = np.einsum("rij,fnj->rfni", rots, vel[0])
    err = max(np.abs(pos[1:-1] - want_pos).max(), np.abs(vel[1:-1] - want_vel).max())
    assert err < 1e-9, f"max equivariance error over {n_rot} random O({dim}) maps: {err}"
    assert np.abs(pos[-1] - pos[0][:, perm]).max() < 1e-9
    # Sanity: the motion is not trivial (bodies moved and accelerated).
    assert np.abs(pos[0, -1] - pos[0, 0]).max() > 0.1


def test_walls_keep_bodies_inside_and_break_rotation_symmetry():
    x, v, q = initial_conditions(7, "train", 0, 32, n_bodies=5, dim=3)
    pos, _ = simulate(x, v, q, n_steps=5000, sample_freq=100, box_size=1.0)
    assert np.abs(pos).max() <= 1.0
    free, _ = simulate(x, v, q, n_steps=5000, sample_freq=100, box_size=None)
    assert np.abs(free).max() > 1.5


def test_nonfinite_simulation_is_reported_with_its_index():
    x, v, q = initial_conditions(1, "train", 0, 4, n_bodies=5, dim=3)
    x[2, 3] = x[2, 1]  # two bodies at the same place: 0/0 force
    with pytest.raises(NonFiniteSimulationError, match=r"index 2\b") as info:
        simulate(x, v, q, n_steps=300, sample_freq=100)
    assert info.value.indices == [2]


def test_results_do_not_depend_on_threads_or_batch_composition():
    x, v, q = initial_conditions(2, "test", 0, 75, n_bodies=5, dim=3)
    kw = dict(n_steps=600, sample_freq=100)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, _ = simulate(x, v, q, **kw)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many, _ = simulate(x, v, q, **kw)
    finally:
        numba.set_num_threads(before)
    part, _ = simulate(x[7:40], v[7:40], q[7:40], **kw)   # other lane groups and tail
    single, _ = simulate(x[70:71], v[70:71], q[70:71], **kw)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(part, many[7:40])
    np.testing.assert_array_equal(single, many[70:71])
