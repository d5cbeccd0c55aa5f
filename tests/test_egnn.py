"""The EGNN baseline (models/egnn.py): size, symmetries, padding, and that it learns."""
import pytest
import torch

from invattn.models.egnn import EGNN
from test_models_equivariance import random_rotation, reflection

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def inputs(generator, batch=3, bodies=5):
    x = torch.randn(batch, bodies, 3, generator=generator, dtype=F64)
    v = torch.randn(batch, bodies, 3, generator=generator, dtype=F64)
    q = torch.randint(0, 2, (batch, bodies), generator=generator).to(F64) * 2 - 1
    return x, v, q


def trained_like_model(seed=0):
    """Default-size EGNN in float64 with its tiny phi_x init scaled up, so coordinate terms matter."""
    torch.manual_seed(seed)
    model = EGNN().double()
    with torch.no_grad():
        for layer in model.layers:
            layer.coord[-1].weight.mul_(1000.0)
    return model


def test_parameter_count_matches_paper():
    count = sum(p.numel() for p in EGNN().parameters())
    assert count == 133_764
    assert abs(count / 134_000 - 1) < 0.01


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
def test_rotation_reflection_translation_equivariance(proper):
    gen = torch.Generator().manual_seed(3)
    model = trained_like_model()
    x, v, q = inputs(gen)
    dx, dv = model(x, v, q)
    assert dx.abs().mean() > 1e-2 and dv.abs().mean() > 1e-2
    errors = []
    for _ in range(5):
        rot = random_rotation(gen) if proper else reflection(gen)
        shift = torch.randn(3, generator=gen, dtype=F64) * 10
        dx2, dv2 = model(x @ rot.T + shift, v @ rot.T, q)
        errors += [(dx2 - dx @ rot.T).abs().max().item(), (dv2 - dv @ rot.T).abs().max().item()]
    assert max(errors) < 1e-10 * max(1.0, dx.abs().max().item())


def test_permutation_equivariance():
    gen = torch.Generator().manual_seed(4)
    model = trained_like_model()
    x, v, q = inputs(gen)
    dx, dv = model(x, v, q)
    perm = torch.randperm(5, generator=gen)
    dx2, dv2 = model(x[:, perm], v[:, perm], q[:, perm])
    torch.testing.assert_close(dx2, dx[:, perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(dv2, dv[:, perm], rtol=0, atol=1e-12)


def test_padding_does_not_change_real_bodies():
    gen = torch.Generator().manual_seed(5)
    model = trained_like_model()
    x, v, q = inputs(gen, batch=2, bodies=4)
    dx, dv = model(x, v, q)
    pad = lambda t, fill: torch.cat([t, torch.full_like(t[:, :2], fill)], 1)  # noqa: E731
    mask = torch.cat([torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)], 1)
    dx2, dv2 = model(pad(x, float("nan")), pad(v, 1e6), pad(q, 3.0), mask)
    torch.testing.assert_close(dx2[:, :4], dx, rtol=0, atol=1e-12)
    torch.testing.assert_close(dv2[:, :4], dv, rtol=0, atol=1e-12)
    assert (dx2[:, 4:] == 0).all() and (dv2[:, 4:] == 0).all()


def test_learns_a_simple_displacement():
    """A few Adam steps on 'displacement = velocity' cut the loss: the baseline is trainable."""
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    model = EGNN(n_layers=2, hidden=32)
    x, v, q = (t.float() for t in inputs(gen, batch=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        dx, _ = model(x, v, q)
        loss = (dx - v).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_sizes_and_shapes_are_named():
    with pytest.raises(ValueError, match="hidden"):
        EGNN(hidden=0)
    with pytest.raises(ValueError, match="velocities"):
        EGNN()(torch.randn(2, 5, 3), torch.randn(2, 4, 3), torch.ones(2, 5))
