"""Numerical symmetry tests of the full models: rotations, translations, permutations, reflections.

Maximum (not mean) errors over several random transformations. TF32 is switched off so the
tolerances mean the same on a GPU as on a CPU.
"""
import pytest
import torch

from invattn.models import NBodyModel, QM9Model

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# Small configurations keep the suite fast; the defaults are exercised in test_models_numerics.py.
SMALL_NBODY = dict(n_layers=3, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8, mlp_hidden=16)
SMALL_QM9 = dict(n_layers=3, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8,
                 mlp_hidden=16, readout=8)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-4}


def random_rotation(generator, dtype=F64):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def reflection(generator, dtype=F64):
    """A random improper orthogonal matrix (rotation times a mirror)."""
    return random_rotation(generator, dtype) @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=dtype))


def nbody_inputs(generator, dtype=F64, batch=3, bodies=5, device="cpu"):
    x = torch.randn(batch, bodies, 3, generator=generator, dtype=dtype)
    v = torch.randn(batch, bodies, 3, generator=generator, dtype=dtype)
    q = torch.randint(0, 2, (batch, bodies), generator=generator).to(dtype) * 2 - 1
    return x.to(device), v.to(device), q.to(device)


def qm9_inputs(generator, dtype=F64, batch=2, atoms=9, device="cpu"):
    z = torch.tensor([1, 6, 7, 8, 9])[torch.randint(0, 5, (batch, atoms), generator=generator)]
    x = torch.randn(batch, atoms, 3, generator=generator, dtype=dtype) * 1.5
    bonds = torch.randint(0, 5, (batch, atoms, atoms), generator=generator)
    bonds = torch.maximum(bonds, bonds.transpose(1, 2))
    return z.to(device), x.to(device), bonds.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_rotation_translation_equivariance(group, dtype, device):
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = NBodyModel(group=group, **SMALL_NBODY).to(device=device, dtype=dtype)
    x, v, q = nbody_inputs(gen, dtype, device=device)
    dx, dv = model(x, v, q)
    assert dx.abs().mean() > 1e-3 and dv.abs().mean() > 1e-3  # not trivially zero
    errors = []
    for _ in range(10):
        rot = random_rotation(gen, dtype).to(device)
        shift = (torch.randn(3, generator=gen, dtype=dtype) * 10).to(device)
        dx2, dv2 = model(x @ rot.T + shift, v @ rot.T, q)
        errors += [(dx2 - dx @ rot.T).abs().max().item(), (dv2 - dv @ rot.T).abs().max().item()]
    assert max(errors) < TOLERANCE[dtype] * max(1.0, dx.abs().max().item())


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_translation_invariance_exact_shift(group):
    gen = torch.Generator().manual_seed(12)
    model = NBodyModel(group=group, **SMALL_NBODY).double()
    x, v, q = nbody_inputs(gen)
    dx, dv = model(x, v, q)
    dx2, dv2 = model(x + torch.tensor([3.0, -7.0, 100.0], dtype=F64), v, q)
    assert (dx2 - dx).abs().max() < 1e-10 and (dv2 - dv).abs().max() < 1e-10


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_permutation_equivariance(group):
    gen = torch.Generator().manual_seed(13)
    model = NBodyModel(group=group, **SMALL_NBODY).double()
    x, v, q = nbody_inputs(gen)
    dx, dv = model(x, v, q)
    for _ in range(3):
        perm = torch.randperm(x.shape[1], generator=gen)
        dx2, dv2 = model(x[:, perm], v[:, perm], q[:, perm])
        assert (dx2 - dx[:, perm]).abs().max() < 1e-12 and (dv2 - dv[:, perm]).abs().max() < 1e-12


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_reflection(group):
    gen = torch.Generator().manual_seed(14)
    model = NBodyModel(group=group, **SMALL_NBODY).double()
    x, v, q = nbody_inputs(gen)
    dx, dv = model(x, v, q)
    errors = []
    for _ in range(3):
        mirror = reflection(gen)
        dx2, dv2 = model(x @ mirror.T, v @ mirror.T, q)
        errors += [(dx2 - dx @ mirror.T).abs().max().item(), (dv2 - dv @ mirror.T).abs().max().item()]
    if group == "E3":
        assert max(errors) < 1e-10
    else:  # SE(3) only: generic inputs are not mapped equivariantly under a mirror
        assert min(errors) > 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_qm9_rotation_translation_permutation_invariance(group, dtype, device):
    gen = torch.Generator().manual_seed(15)
    torch.manual_seed(15)
    model = QM9Model(group=group, **SMALL_QM9).to(device=device, dtype=dtype)
    z, x, bonds = qm9_inputs(gen, dtype, device=device)
    y = model(z, x, bonds)
    assert y.abs().min() > 1e-4  # not trivially zero
    errors = []
    for _ in range(10):
        rot = random_rotation(gen, dtype).to(device)
        shift = (torch.randn(3, generator=gen, dtype=dtype) * 10).to(device)
        errors.append((model(z, x @ rot.T + shift, bonds) - y).abs().max().item())
        perm = torch.randperm(z.shape[1], generator=gen).to(device)
        errors.append((model(z[:, perm], x[:, perm], bonds[:, perm][:, :, perm]) - y).abs().max().item())
    assert max(errors) < TOLERANCE[dtype] * max(1.0, y.abs().max().item())


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_qm9_reflection(group):
    gen = torch.Generator().manual_seed(16)
    model = QM9Model(group=group, **SMALL_QM9).double()
    z, x, bonds = qm9_inputs(gen)
    y = model(z, x, bonds)
    errors = [(model(z, x @ reflection(gen).T, bonds) - y).abs().max().item() for _ in range(3)]
    if group == "E3":
        assert max(errors) < 1e-10
    else:
        assert min(errors) > 1e-6


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_default_models_rotation_equivariance(group):
    """The paper-sized defaults, float64, one batch, several rotations."""
    gen = torch.Generator().manual_seed(17)
    model = NBodyModel(group=group).double()
    x, v, q = nbody_inputs(gen, batch=2)
    dx, dv = model(x, v, q)
    qm9 = QM9Model(group=group).double()
    z, xm, bonds = qm9_inputs(gen, batch=1, atoms=6)
    y = qm9(z, xm, bonds)
    for _ in range(3):
        rot = random_rotation(gen)
        dx2, dv2 = model(x @ rot.T, v @ rot.T, q)
        assert max((dx2 - dx @ rot.T).abs().max(), (dv2 - dv @ rot.T).abs().max()) < 1e-10
        assert (qm9(z, xm @ rot.T, bonds) - y).abs().max() < 1e-10
