"""The sparse (cutoff) path of both models: agreement with the dense path, symmetries, continuity
at the cutoff, ragged batches, isolated nodes, checkpoints.

Float64 throughout; TF32 is switched off so the tolerances mean the same on a GPU.
"""
import io

import pytest
import torch

from invattn.models import NBodyModel, QM9Model, build_model
from invattn.models.sparse_attention import scatter_switched_softmax_sum
from test_models_equivariance import SMALL_NBODY, SMALL_QM9, random_rotation, reflection

F64 = torch.float64
TOL = 1e-10
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def nbody(group, cutoff=None, cutoff_inner=None, seed=0):
    torch.manual_seed(seed)
    return NBodyModel(group=group, cutoff=cutoff, cutoff_inner=cutoff_inner, **SMALL_NBODY).double()


def qm9(group, cutoff=None, cutoff_inner=None, seed=0, pooling="sum"):
    torch.manual_seed(seed)
    return QM9Model(group=group, cutoff=cutoff, cutoff_inner=cutoff_inner, pooling=pooling,
                    **SMALL_QM9).double()


def nbody_batch(seed=0, batch=3, bodies=12, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, bodies, 3, generator=g, dtype=F64) * scale
    v = torch.randn(batch, bodies, 3, generator=g, dtype=F64)
    q = torch.randint(0, 2, (batch, bodies), generator=g).to(F64) * 2 - 1
    mask = torch.ones(batch, bodies, dtype=torch.bool)
    for b in range(1, batch):  # graphs of different sizes in one padded batch
        mask[b, bodies - 3 * b:] = False
    return x, v, q, mask


def qm9_batch(seed=0, batch=3, atoms=10):
    g = torch.Generator().manual_seed(seed)
    z = torch.tensor([1, 6, 7, 8, 9])[torch.randint(0, 5, (batch, atoms), generator=g)]
    x = torch.randn(batch, atoms, 3, generator=g, dtype=F64) * 1.5
    bonds = torch.randint(0, 5, (batch, atoms, atoms), generator=g)
    bonds = torch.maximum(bonds, bonds.transpose(1, 2))
    mask = torch.ones(batch, atoms, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    return z, x, bonds, mask


def pair_distances(x, mask):
    d = (x[:, :, None] - x[:, None]).norm(dim=-1)
    return d[mask[:, :, None] & mask[:, None]]


def max_diff(a, b):
    return max(float((p - q).detach().abs().max()) for p, q in zip(a, b)) if isinstance(a, tuple) \
        else float((a - b).detach().abs().max())


# --- sparse == dense when the cutoff is beyond every pair -------------------------------------

@pytest.mark.parametrize("group", ["SE3", "E3"])
@pytest.mark.parametrize("device", DEVICES)
def test_nbody_sparse_matches_dense(group, device):
    x, v, q, mask = (t.to(device) for t in nbody_batch())
    far = float(pair_distances(x, mask).max())
    dense = nbody(group).to(device)
    sparse = nbody(group, cutoff=far + 1.0, cutoff_inner=far + 1e-3).to(device)
    sparse.load_state_dict(dense.state_dict())
    out_dense, out_sparse = dense(x, v, q, mask), sparse(x, v, q, mask)
    assert max_diff(out_dense, out_sparse) < TOL
    assert float(out_dense[0].detach().abs().max()) > 1e-3  # not trivially zero
    assert all(float(o[~mask].detach().abs().max()) == 0.0 for o in out_sparse)  # padded bodies stay 0


@pytest.mark.parametrize("group", ["SE3", "E3"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_qm9_sparse_matches_dense(group, pooling):
    z, x, bonds, mask = qm9_batch()
    dense = qm9(group, pooling=pooling)
    sparse = qm9(group, cutoff=1e3, pooling=pooling)  # inner 750 A: beyond every pair
    sparse.load_state_dict(dense.state_dict())
    assert max_diff(dense(z, x, bonds, mask), sparse(z, x, bonds, mask)) < TOL


def test_same_seed_same_parameters_in_both_paths():
    dense, sparse = nbody("SE3"), nbody("SE3", cutoff=2.0)
    assert dense.state_dict().keys() == sparse.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), sparse.state_dict().values()))


def test_cutoff_actually_removes_pairs():
    """With a real cutoff the result differs from dense, and far pairs have no influence."""
    x, v, q, mask = nbody_batch(bodies=8)
    mask[:] = True
    model = nbody("E3", cutoff=1.5, cutoff_inner=1.0)
    dense = nbody("E3")
    assert max_diff(model(x, v, q, mask), dense(x, v, q, mask)) > 1e-4
    # move body 0 of graph 0 to 1000 units away: the others only see that it left
    moved = x.clone()
    moved[0, 0] += torch.tensor([1000.0, 0.0, 0.0], dtype=F64)
    alone = model(moved[:1, 1:], v[:1, 1:], q[:1, 1:], mask[:1, 1:])
    together = model(moved[:1], v[:1], q[:1], mask[:1])
    assert max_diff(tuple(o[:, 1:] for o in together), alone) < TOL


# --- symmetries of the sparse path ---------------------------------------------------------

@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_nbody_sparse_equivariance(group):
    g = torch.Generator().manual_seed(5)
    x, v, q, mask = nbody_batch(seed=1, bodies=14)
    model = nbody(group, cutoff=2.5, cutoff_inner=1.5)
    d = pair_distances(x, mask)
    assert 0.2 < float((d < 2.5).double().mean()) < 0.8  # a real sparse graph, not all or nothing
    dx, dv = model(x, v, q, mask)
    transforms = [random_rotation(g) for _ in range(3)] + ([reflection(g) for _ in range(2)] if group == "E3" else [])
    for rot in transforms:
        shift = torch.randn(1, 1, 3, generator=g, dtype=F64) * 10
        rx, rv = model(x @ rot.T + shift, v @ rot.T, q, mask)
        assert max_diff((rx, rv), (dx @ rot.T, dv @ rot.T)) < TOL
    perm = torch.randperm(14, generator=g)
    px, pv = model(x[:, perm], v[:, perm], q[:, perm], mask[:, perm])
    assert max_diff((px, pv), (dx[:, perm], dv[:, perm])) < TOL


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_equivariance_in_float32(device):
    """float32 (the training dtype): rounding may flip which near-cutoff pairs are listed, but
    their weights are ~0, so the errors stay at float32 rounding level."""
    g = torch.Generator().manual_seed(21)
    x, v, q, mask = (t.float().to(device) if t.is_floating_point() else t.to(device)
                     for t in nbody_batch(seed=9, bodies=40, scale=3.0))
    model = NBodyModel(group="SE3", cutoff=2.5, cutoff_inner=1.5, **SMALL_NBODY).to(device)
    with torch.no_grad():
        dx, dv = model(x, v, q, mask)
        for _ in range(3):
            rot = random_rotation(g, torch.float32).to(device)
            rx, rv = model(x @ rot.T + 3.0, v @ rot.T, q, mask)
            assert max_diff((rx, rv), (dx @ rot.T, dv @ rot.T)) < 2e-4 * (1 + float(dx.abs().max()))


def test_se3_sparse_sees_reflections():
    """SE(3) is not reflection-equivariant by design; the sparse path keeps that."""
    g = torch.Generator().manual_seed(2)
    z, x, bonds, mask = qm9_batch(seed=2)
    model = qm9("SE3", cutoff=2.5)
    mirror = reflection(g)
    assert max_diff(model(z, x @ mirror.T, bonds, mask), model(z, x, bonds, mask)) > 1e-8
    e3 = qm9("E3", cutoff=2.5)
    assert max_diff(e3(z, x @ mirror.T, bonds, mask), e3(z, x, bonds, mask)) < TOL


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_qm9_sparse_invariance(group):
    g = torch.Generator().manual_seed(9)
    z, x, bonds, mask = qm9_batch(seed=3)
    model = qm9(group, cutoff=2.5, cutoff_inner=1.8)
    y = model(z, x, bonds, mask)
    for _ in range(3):
        rot = random_rotation(g)
        assert max_diff(model(z, x @ rot.T + torch.randn(3, generator=g, dtype=F64), bonds, mask), y) < TOL
    perm = torch.randperm(10, generator=g)
    assert max_diff(model(z[:, perm], x[:, perm], bonds[:, perm][:, :, perm], mask[:, perm]), y) < TOL


@pytest.mark.parametrize("group", ["SE3", "E3"])
@pytest.mark.parametrize("sign", [-1.0, 0.0, 1.0])
def test_equivariance_with_pairs_at_the_cutoff(group, sign):
    """Pairs at cutoff +- 1e-7 (or exactly at it) may fall on either side of the search after a
    rotation's rounding; their weight is ~1e-20, so equivariance still holds to 1e-10."""
    g = torch.Generator().manual_seed(11)
    cutoff = 2.0
    x, v, q, mask = nbody_batch(seed=4, batch=2, bodies=6, scale=3.0)
    mask[:] = True
    for b in range(2):  # body 1 (and 2) on the cutoff sphere around body 0, in random directions
        for k in (1, 2):
            direction = torch.randn(3, generator=g, dtype=F64)
            x[b, k] = x[b, 0] + direction / direction.norm() * (cutoff + sign * 1e-7)
    model = nbody(group, cutoff=cutoff, cutoff_inner=1.0)
    dx, dv = model(x, v, q, mask)
    for _ in range(5):
        rot = reflection(g) if group == "E3" else random_rotation(g)
        shift = torch.randn(3, generator=g, dtype=F64) * 100
        rx, rv = model(x @ rot.T + shift, v @ rot.T, q, mask)
        assert max_diff((rx, rv), (dx @ rot.T, dv @ rot.T)) < TOL


# --- continuity across the cutoff ------------------------------------------------------------

@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_outputs_and_gradients_are_continuous_across_the_cutoff(group):
    cutoff, inner = 2.0, 1.2
    model = nbody(group, cutoff=cutoff, cutoff_inner=inner)
    g = torch.Generator().manual_seed(3)
    # body 1 at the origin, bodies 2..4 on its +x side (> cutoff from body 0 throughout); body 0
    # comes in along -x through the cutoff of the pair (0, 1) only
    x0 = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.2, -0.4, 0.3],
                        [0.9, 0.1, -0.6]]], dtype=F64)
    v = torch.randn(1, 5, 3, generator=g, dtype=F64)
    q = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]], dtype=F64)
    direction = torch.tensor([1.0, 0.0, 0.0], dtype=F64)

    def at(distance):
        """Body 0 at ``distance`` from body 1, along x; returns outputs and d(loss)/d(positions)."""
        x = x0.clone()
        x[0, 0] = x[0, 1] - direction * distance
        x.requires_grad_(True)
        dx, dv = model(x, v, q)
        (grad,) = torch.autograd.grad((dx.pow(2).sum() + dv.pow(2).sum()), x)
        return torch.cat([dx.flatten(), dv.flatten()]).detach(), grad

    # ... and body 0 approaches body 1 through the cutoff: nothing jumps.
    (below, g_below), (above, g_above) = at(cutoff - 1e-7), at(cutoff + 1e-7)
    assert float((below - above).abs().max()) < 1e-12
    assert float((g_below - g_above).abs().max()) < 1e-9
    # beyond the cutoff the pair has no influence: bodies 1..4 see the same as with body 0 far away
    (far, _) = at(50.0)
    exactly, _ = at(cutoff)
    others = torch.arange(30).reshape(2, 5, 3)[:, 1:].flatten()  # outputs of bodies 1..4
    assert float((above[others] - far[others]).abs().max()) < TOL
    assert float((exactly[others] - far[others]).abs().max()) < TOL
    # inside the switching band the pair does matter (so the checks above are not vacuous)
    inside, _ = at(0.5 * (inner + cutoff))
    assert float((inside[others] - far[others]).abs().max()) > 1e-6


def test_switched_softmax_matches_reference_and_survives_extreme_logits():
    g = torch.Generator().manual_seed(0)
    target = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    logits = torch.randn(8, 2, generator=g, dtype=F64) * 3
    weights = torch.rand(8, generator=g, dtype=F64)
    values = torch.randn(8, 2, 5, generator=g, dtype=F64)
    out = scatter_switched_softmax_sum(logits, weights, target, 5, values)
    for i in range(4):
        sel = target == i
        a = weights[sel, None] * logits[sel].exp()
        ref = (a[..., None] * values[sel]).sum(0) / a.sum(0)[..., None]
        assert float((out[i] - ref).abs().max()) < 1e-14
    assert float(out[4].abs().max()) == 0.0  # a node without edges gets 0, not NaN
    # float32: a weight-0 pair (at the cutoff) with a logit 200 above the self-loop's must not
    # underflow the self-loop's term and zero the output
    logits = torch.tensor([[0.0], [200.0]], requires_grad=True)
    weights = torch.tensor([1.0, 0.0], requires_grad=True)
    values = torch.tensor([[[1.0, 2.0]], [[5.0, 7.0]]])
    out = scatter_switched_softmax_sum(logits, weights, torch.tensor([0, 0]), 1, values)
    assert out[0, 0].tolist() == [1.0, 2.0]
    out.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(weights.grad).all()


# --- isolated nodes, ragged batches -----------------------------------------------------------

@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_isolated_body_is_finite_and_alone(group):
    model = nbody(group, cutoff=1.0, cutoff_inner=0.5)
    x, v, q, mask = nbody_batch(seed=6, batch=1, bodies=6, scale=0.3)
    x[0, 0] = torch.tensor([40.0, 0.0, 0.0], dtype=F64)  # no neighbour within the cutoff
    x.requires_grad_(True)
    dx, dv = model(x, v, q, mask)
    grad, *params = torch.autograd.grad(dx.sum() + dv.sum(), [x, *model.parameters()], allow_unused=True)
    assert torch.isfinite(dx).all() and torch.isfinite(dv).all() and torch.isfinite(grad).all()
    assert all(p is None or torch.isfinite(p).all() for p in params)
    assert float(grad[0, 0].abs().max()) == 0.0  # nothing depends on where the lone body is
    lone = model(x[:, :1].detach(), v[:, :1], q[:, :1])
    assert max_diff(tuple(o[:, :1] for o in (dx, dv)), lone) < TOL
    single = model(x[:, :1].detach(), v[:, :1], q[:, :1])  # a graph of one body
    assert all(torch.isfinite(o).all() for o in single)


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_ragged_batch_equals_graphs_one_by_one(group):
    model = nbody(group, cutoff=2.5, cutoff_inner=1.5)
    x, v, q, mask = nbody_batch(seed=7, batch=3, bodies=12)
    batched = model(x, v, q, mask)
    for b in range(3):
        n = int(mask[b].sum())
        alone = model(x[b:b + 1, :n], v[b:b + 1, :n], q[b:b + 1, :n])
        assert max_diff(tuple(o[b:b + 1, :n] for o in batched), alone) < TOL


def test_large_graph_search_does_not_change_outputs(monkeypatch):
    """200 bodies take the cell-list search; forcing all pairs gives the same edges, hence the
    same outputs, and the large graph is still equivariant."""
    import invattn.models.graph as graph

    x, v, q, mask = nbody_batch(seed=12, batch=2, bodies=200, scale=4.0)
    model = nbody("E3", cutoff=2.0, cutoff_inner=1.5)
    cells = model(x, v, q, mask)
    g = torch.Generator().manual_seed(13)
    rot = reflection(g)
    rotated = model(x @ rot.T + 1.0, v @ rot.T, q, mask)
    assert max_diff(rotated, tuple(o @ rot.T for o in cells)) < TOL
    monkeypatch.setattr(graph, "_BRUTE_FORCE_MAX_NODES", 10 ** 9)
    assert max_diff(model(x, v, q, mask), cells) == 0.0


def test_far_apart_molecules_do_not_interact():
    """The issue's example: two ethanes 1000 A apart in one graph. With a cutoff the per-atom
    features of each molecule (before pooling) equal those of the molecule alone; all-pairs
    attention couples them."""
    z = torch.tensor([[6, 6, 1, 1, 1, 1, 1, 1]])
    x = torch.tensor([[[0.0, 0.0, 0.765], [0.0, 0.0, -0.765], [1.018, 0.0, 1.164],
                       [-0.509, 0.882, 1.164], [-0.509, -0.882, 1.164], [-1.018, 0.0, -1.164],
                       [0.509, -0.882, -1.164], [0.509, 0.882, -1.164]]], dtype=F64)
    bonds = torch.zeros(1, 8, 8, dtype=torch.long)
    for a, b in [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (1, 7)]:
        bonds[0, a, b] = bonds[0, b, a] = 1
    pair_z = torch.cat([z, z], 1)
    pair_x = torch.cat([x, x @ random_rotation(torch.Generator().manual_seed(0)).T
                        + torch.tensor([1000.0, 0.0, 0.0], dtype=F64)], 1)
    pair_bonds = torch.zeros(1, 16, 16, dtype=torch.long)
    pair_bonds[0, :8, :8] = pair_bonds[0, 8:, 8:] = bonds[0]

    def per_atom(model, *inputs):
        seen = []
        handle = model.readout.register_forward_hook(lambda _m, _i, out: seen.append(out.scalars))
        with torch.no_grad():
            model(*inputs)
        handle.remove()
        return seen[0].reshape(-1, seen[0].shape[-1])  # [atoms, readout] (flat or one padded graph)

    sparse, dense = qm9("SE3", cutoff=5.0), qm9("SE3")
    alone, both = per_atom(sparse, z, x, bonds), per_atom(sparse, pair_z, pair_x, pair_bonds)
    assert max_diff(both[:8], alone) < TOL and max_diff(both[8:], alone) < TOL
    assert max_diff(per_atom(dense, pair_z, pair_x, pair_bonds)[:8], per_atom(dense, z, x, bonds)) > 1e-6


# --- checkpoints ---------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["nbody", "qm9"])
@pytest.mark.parametrize("cutoff", [None, 2.5])
def test_checkpoint_round_trip(task, cutoff):
    torch.manual_seed(3)
    small = SMALL_NBODY if task == "nbody" else SMALL_QM9
    model = build_model(task, group="SE3", subdeterminants=2, cross_products=3, sampling_seed=4,
                        cutoff=cutoff, **small).double()
    buffer = io.BytesIO()
    torch.save({"config": model.config, "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["config"].get("cutoff") == cutoff  # an unset cutoff is left out of the config
    restored = build_model(task, **saved["config"]).double()
    restored.load_state_dict(saved["model"])
    assert restored.cutoff == model.cutoff
    if task == "nbody":
        x, v, q, mask = nbody_batch(seed=8)
        assert max_diff(model(x, v, q, mask), restored(x, v, q, mask)) == 0.0
    else:
        z, x, bonds, mask = qm9_batch(seed=8)
        assert max_diff(model(z, x, bonds, mask), restored(z, x, bonds, mask)) == 0.0


def test_bad_cutoff_option_is_named():
    with pytest.raises(ValueError, match="cutoff must be a positive number"):
        NBodyModel(cutoff=-1.0)
    with pytest.raises(ValueError, match="cutoff_inner must be"):
        QM9Model(cutoff=2.0, cutoff_inner=3.0)
