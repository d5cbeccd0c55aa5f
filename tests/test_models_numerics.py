"""Padding, degenerate geometry, gradients, dtypes and input validation of the task models."""
import pytest
import torch

from invattn.models import NBodyModel, QM9Model

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

SMALL_NBODY = dict(n_layers=2, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8, mlp_hidden=16)
SMALL_QM9 = dict(n_layers=2, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8,
                 mlp_hidden=16, readout=8)

# Formaldehyde (QM9 id 6): planar. z is set to exactly 0 so every subdeterminant is singular.
FORMALDEHYDE_Z = torch.tensor([6, 8, 1, 1])
FORMALDEHYDE_X = torch.tensor([[-0.0089, 0.5272, 0.0], [0.0006, -0.6863, 0.0],
                               [0.9178, 1.1181, 0.0], [-0.9378, 1.1037, 0.0]], dtype=F64)
FORMALDEHYDE_BONDS = torch.tensor([[0, 2, 1, 1], [2, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])


def pad(tensor, extra, fill, dim=1):
    shape = list(tensor.shape)
    shape[dim] = extra
    return torch.cat([tensor, torch.full(shape, fill, dtype=tensor.dtype)], dim=dim)


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_padding_never_affects_real_bodies(group):
    gen = torch.Generator().manual_seed(21)
    model = NBodyModel(group=group).double()
    x = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    v = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    q = torch.tensor([[1.0, -1, 1, 1, -1], [-1, -1, 1, -1, 1]], dtype=F64)
    dx, dv = model(x, v, q)
    # Three padded bodies with garbage: huge, NaN and inf coordinates, coincident with a real body.
    xp = torch.cat([x, torch.tensor([[[1e6, -3e5, 7.0], [float("nan")] * 3, x[0, 0].tolist()]] * 2, dtype=F64)], 1)
    vp = torch.cat([v, torch.tensor([[[float("inf")] * 3, [2.0, 2, 2], [float("nan")] * 3]] * 2, dtype=F64)], 1)
    qp = pad(q, 3, float("nan"))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :5] = True
    xp.requires_grad_(True)
    dxp, dvp = model(xp, vp, qp, mask)
    assert torch.isfinite(dxp).all() and torch.isfinite(dvp).all()
    torch.testing.assert_close(dxp[:, :5], dx, atol=1e-12, rtol=0)
    torch.testing.assert_close(dvp[:, :5], dv, atol=1e-12, rtol=0)
    assert dxp[:, 5:].abs().max() == 0 and dvp[:, 5:].abs().max() == 0
    (dxp.sum() + dvp.sum()).backward()
    assert torch.isfinite(xp.grad).all() and xp.grad[:, 5:].abs().max() == 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_fully_padded_system_is_finite(group):
    model = NBodyModel(group=group, **SMALL_NBODY)
    x, v, q = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.ones(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False  # the whole second system is padding
    x.requires_grad_(True)
    dx, dv = model(x, v, q, mask)
    assert torch.isfinite(dx).all() and dx[1].abs().max() == 0 and dv[1].abs().max() == 0
    (dx.sum() + dv.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_coincident_points_and_zero_velocities_are_finite(group):
    model = NBodyModel(group=group)
    x = torch.zeros(2, 5, 3)
    x[1, 2:] = torch.tensor([1.0, 2.0, 3.0])  # three coincident bodies
    v = torch.zeros(2, 5, 3, requires_grad=True)
    x.requires_grad_(True)
    dx, dv = model(x, v, torch.tensor([[1.0, -1, 1, -1, 1]] * 2))
    assert torch.isfinite(dx).all() and torch.isfinite(dv).all()
    (dx.pow(2).sum() + dv.pow(2).sum() + dx.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(v.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_gradcheck_on_collinear_bodies(group):
    """All positions and velocities on one line: every subdeterminant and cross product is 0."""
    torch.manual_seed(22)
    model = NBodyModel(group=group, **SMALL_NBODY).double()
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=F64)
    x = (torch.linspace(-2, 2, 5, dtype=F64)[:, None] * direction).unsqueeze(0).requires_grad_(True)
    v = (torch.tensor([0.5, -0.2, 0.1, 0.3, -0.4], dtype=F64)[:, None] * direction).unsqueeze(0).requires_grad_(True)
    q = torch.tensor([[1.0, -1, 1, -1, 1]], dtype=F64)
    assert torch.autograd.gradcheck(lambda a, b: model(a, b, q), (x, v), atol=1e-6)


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_qm9_gradcheck_on_planar_molecule(group):
    torch.manual_seed(23)
    model = QM9Model(group=group).double()  # paper-sized: 7 layers, 8 heads
    x = FORMALDEHYDE_X.unsqueeze(0).clone().requires_grad_(True)
    z, bonds = FORMALDEHYDE_Z.unsqueeze(0), FORMALDEHYDE_BONDS.unsqueeze(0)
    assert torch.autograd.gradcheck(lambda p: model(z, p, bonds), (x,), atol=1e-6)


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_qm9_padding_never_affects_real_atoms(group):
    model = QM9Model(group=group, **SMALL_QM9).double()
    z, x, bonds = FORMALDEHYDE_Z[None], FORMALDEHYDE_X[None], FORMALDEHYDE_BONDS[None]
    y = model(z, x, bonds, torch.ones(1, 4, dtype=torch.bool))
    zp = pad(z, 3, 99)  # not an element QM9 has: must be ignored on padded atoms
    xp = torch.cat([x, torch.tensor([[[float("nan")] * 3, [1e8, 0, 0], x[0, 1].tolist()]], dtype=F64)], 1)
    bp = torch.full((1, 7, 7), -5)
    bp[:, :4, :4] = bonds
    mask = torch.tensor([[True] * 4 + [False] * 3])
    yp = model(zp, xp, bp, mask)
    assert torch.isfinite(yp).all()
    torch.testing.assert_close(yp, y, atol=1e-12, rtol=0)
    # Interleaved padding (padded atom in the middle) too.
    order = torch.tensor([0, 4, 1, 5, 2, 3, 6])
    yi = model(zp[:, order], xp[:, order], bp[:, order][:, :, order], mask[:, order])
    torch.testing.assert_close(yi, y, atol=1e-12, rtol=0)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_qm9_all_padded_molecule_and_pooling(pooling):
    model = QM9Model(pooling=pooling, **SMALL_QM9)
    z = torch.stack([FORMALDEHYDE_Z, FORMALDEHYDE_Z])
    x = torch.stack([FORMALDEHYDE_X, FORMALDEHYDE_X]).float().requires_grad_(True)
    bonds = torch.stack([FORMALDEHYDE_BONDS] * 2)
    mask = torch.tensor([[True] * 4, [False] * 4])
    y = model(z, x, bonds, mask)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().max() == 0


def test_qm9_sum_pooling_is_mean_times_atom_count():
    torch.manual_seed(24)
    sum_model = QM9Model(pooling="sum", **SMALL_QM9).double()
    mean_model = QM9Model(pooling="mean", **SMALL_QM9).double()
    mean_model.load_state_dict(sum_model.state_dict())
    for model in (sum_model, mean_model):
        model.head = torch.nn.Identity()  # expose the pooled per-molecule features
    z, x, b = pad(FORMALDEHYDE_Z[None], 2, 0), pad(FORMALDEHYDE_X[None], 2, 0.0), torch.zeros(1, 6, 6, dtype=torch.long)
    b[:, :4, :4] = FORMALDEHYDE_BONDS
    mask = torch.tensor([[True] * 4 + [False] * 2])
    pooled_sum, pooled_mean = sum_model(z, x, b, mask), mean_model(z, x, b, mask)
    assert pooled_sum.abs().max() > 1e-3
    torch.testing.assert_close(pooled_sum, 4 * pooled_mean)


@pytest.mark.parametrize("factory", [lambda: NBodyModel("SE3"), lambda: NBodyModel("E3"),
                                     lambda: QM9Model("SE3", **SMALL_QM9), lambda: QM9Model("E3", **SMALL_QM9)])
def test_gradients_reach_every_parameter(factory):
    torch.manual_seed(25)
    model = factory()
    if isinstance(model, NBodyModel):
        dx, dv = model(torch.randn(4, 5, 3), torch.randn(4, 5, 3), torch.randn(4, 5).sign())
        loss = dx.pow(2).mean() + dv.pow(2).mean()
    else:
        z = torch.tensor([1, 6, 7, 8, 9])[torch.randint(0, 5, (3, 7))]
        loss = model(z, torch.randn(3, 7, 3), torch.randint(0, 5, (3, 7, 7))).pow(2).mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_float32_and_float64_agree():
    torch.manual_seed(26)
    model = NBodyModel("SE3")
    x, v, q = torch.randn(3, 5, 3), torch.randn(3, 5, 3), torch.randn(3, 5).sign()
    dx32, _ = model(x, v, q)
    dx64, _ = model.double()(x.double(), v.double(), q.double())
    assert dx32.dtype == torch.float32 and dx64.dtype == torch.float64
    torch.testing.assert_close(dx32.double(), dx64, atol=1e-4, rtol=1e-3)


def test_nbody_input_validation():
    model = NBodyModel("E3", **SMALL_NBODY)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="velocities"):
        model(x, torch.randn(2, 4, 3), torch.ones(2, 5))
    with pytest.raises(ValueError, match="charges"):
        model(x, x, torch.ones(2, 5, 1))
    with pytest.raises(ValueError, match="mask"):
        model(x, x, torch.ones(2, 5), torch.ones(2, 4, dtype=torch.bool))


def test_qm9_input_validation():
    model = QM9Model("E3", **SMALL_QM9)
    z, x, b = FORMALDEHYDE_Z[None], FORMALDEHYDE_X[None].float(), FORMALDEHYDE_BONDS[None]
    with pytest.raises(ValueError, match=r"atomic_numbers contain \[17\]"):
        model(torch.tensor([[6, 17, 1, 1]]), x, b)
    with pytest.raises(ValueError, match=r"bond_types contain \[7\]"):
        model(z, x, torch.where(b == 2, 7, b))
    with pytest.raises(ValueError, match="bond_types has shape"):
        model(z, x, b[:, :3])
    with pytest.raises(ValueError, match="pooling"):
        QM9Model(pooling="max")
    with pytest.raises(ValueError, match="group"):
        NBodyModel(group="SO2")
