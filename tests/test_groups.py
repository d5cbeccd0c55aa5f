"""The group abstraction (models/groups.py): E(d)/SE(d) and Lorentz, checked numerically.

Every group's layers are tested for equivariance with random group elements in float64
(Lorentz: products of boosts of rapidity up to 2 and rotations; O(1,3) also parity and time
reversal), special groups for *not* being reflection-equivariant, and the refactor for leaving
E3/SE3 outputs as they were (tests/data/group_reference.pt, written by the pre-refactor code).
"""
from __future__ import annotations

import math
import pickle
import sys
from pathlib import Path

import pytest
import torch

from invattn.models import (
    EquivariantAttention,
    EquivariantMap,
    Features,
    FeatureShape,
    NBodyModel,
    NeighbourInvariants,
    QM9Model,
    SparseEquivariantAttention,
    parse_group,
)
from invattn.models.groups import cofactor, determinant
from invattn.models.invariants import cross_products, gram_upper, subdeterminants

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
DATA = Path(__file__).parent / "data"
ALL_GROUPS = ["E2", "SE2", "E3", "SE3", "E4", "SE4", "O(1,3)", "SO+(1,3)"]


# --- random group elements -------------------------------------------------------------------

def random_orthogonal(d: int, gen: torch.Generator, det: int) -> torch.Tensor:
    """Haar-random ``d x d`` orthogonal matrix with determinant ``det`` (+1 or -1)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


def boost(direction: torch.Tensor, rapidity: float) -> torch.Tensor:
    """Pure Lorentz boost along the unit 3-vector ``direction`` (metric diag(+1,-1,-1,-1))."""
    n = direction / direction.norm()
    out = torch.eye(4, dtype=F64)
    ch, sh = math.cosh(rapidity), math.sinh(rapidity)
    out[0, 0] = ch
    out[0, 1:] = out[1:, 0] = sh * n
    out[1:, 1:] += (ch - 1.0) * torch.outer(n, n)
    return out


def random_lorentz(gen: torch.Generator, proper: bool = True) -> torch.Tensor:
    """rotation . boost . rotation with rapidity in [-2, 2]; improper: times P or T as well."""
    def rotation():
        out = torch.eye(4, dtype=F64)
        out[1:, 1:] = random_orthogonal(3, gen, +1)
        return out

    rapidity = 4.0 * float(torch.rand((), generator=gen, dtype=F64)) - 2.0
    lam = rotation() @ boost(torch.randn(3, generator=gen, dtype=F64), rapidity) @ rotation()
    if not proper:
        flip = torch.diag(torch.tensor([1.0, -1, -1, -1] if torch.rand((), generator=gen) < 0.5
                                       else [-1.0, 1, 1, 1], dtype=F64))
        lam = flip @ lam
    return lam


def random_element(name: str, gen: torch.Generator, proper: bool = True) -> torch.Tensor:
    """A random element of the group (``proper=False``: one of determinant -1, outside SE/SO+)."""
    group = parse_group(name)
    if group.euclidean:
        return random_orthogonal(group.dim, gen, +1 if proper else -1)
    return random_lorentz(gen, proper)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


# --- names, algebra --------------------------------------------------------------------------

def test_parse_group_names():
    for name, (canonical, dim, special) in {
        "E2": ("E2", 2, False), "se(2)": ("SE2", 2, True), "SE3": ("SE3", 3, True), "E(3)": ("E3", 3, False),
        "E4": ("E4", 4, False), "SE(5)": ("SE5", 5, True), "O(1,3)": ("O(1,3)", 4, False),
        "so+(1,3)": ("SO+(1,3)", 4, True),
    }.items():
        group = parse_group(name)
        assert (group, group.dim, group.special) == (canonical, dim, special)
    assert parse_group("SO+(1,3)").signature == (1, -1, -1, -1) and parse_group("SE3").signature is None
    assert pickle.loads(pickle.dumps(parse_group("SO+(1,3)"))).signature == (1, -1, -1, -1)
    for bad in ("E1", "SE", "SO(3)", "O(2,2)", "lorentz", ""):
        with pytest.raises(ValueError, match="group must be one of E2, SE2, E3, SE3"):
            parse_group(bad)


@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_determinant_and_cofactor_match_linalg(d):
    gen = torch.Generator().manual_seed(d)
    m = torch.randn(6, d, d, generator=gen, dtype=F64)
    rows = list(m.unbind(-2))
    torch.testing.assert_close(determinant(rows), torch.linalg.det(m))
    # <cof(v_1..v_{d-1}), x> = det[v_1, .., v_{d-1}, x]
    torch.testing.assert_close((cofactor(rows[:-1]) * rows[-1]).sum(-1), torch.linalg.det(m))
    # subdeterminants / cross products by index sets
    v = torch.randn(3, d + 1, d, generator=gen, dtype=F64)
    sets = torch.tensor([[0] + list(range(2, d + 1))])
    torch.testing.assert_close(subdeterminants(v, sets)[..., 0], torch.linalg.det(v[:, sets[0]]))
    assert cross_products(v, sets[:, :-1]).shape == (3, 1, d)


def test_two_d_cross_is_quarter_turn():
    group = parse_group("SE2")
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    torch.testing.assert_close(group.cross([v]), torch.tensor([[0.0, 1.0], [-2.0, 0.0]], dtype=F64))


def test_lorentz_elements_preserve_minkowski_form():
    gen = torch.Generator().manual_seed(0)
    eta = torch.diag(torch.tensor([1.0, -1, -1, -1], dtype=F64))
    for proper in (True, False):
        lam = random_lorentz(gen, proper)
        torch.testing.assert_close(lam.T @ eta @ lam, eta)
        assert (torch.linalg.det(lam) > 0) == proper
    # the Minkowski Gram matrix is invariant, and can be negative (spacelike vectors)
    group = parse_group("O(1,3)")
    v = torch.randn(5, 4, generator=gen, dtype=F64)
    lam = random_lorentz(gen)
    torch.testing.assert_close(gram_upper(v @ lam.T, group=group), gram_upper(v, group=group))
    assert (gram_upper(v, group=group) < 0).any()


# --- equivariance of every layer -------------------------------------------------------------

def map_inputs(d, gen, t=4, l=3, batch=5):
    return Features(torch.randn(batch, t, d, generator=gen, dtype=F64),
                    torch.randn(batch, l, generator=gen, dtype=F64))


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_equivariant_map_equivariance(name):
    gen = torch.Generator().manual_seed(1)
    group = parse_group(name)
    torch.manual_seed(0)
    phi = EquivariantMap(FeatureShape(4, 3), FeatureShape(3, 2), hidden=16, group=group).double()
    x = map_inputs(group.dim, gen)
    out = phi(x)
    assert out.vectors.shape == (5, 3, group.dim)
    for proper in (True, False):
        g = random_element(name, gen, proper)
        moved = phi(Features(x.vectors @ g.T, x.scalars))
        vec_err = relative_error(moved.vectors, out.vectors @ g.T)
        sca_err = relative_error(moved.scalars, out.scalars)
        if proper or not group.special:
            assert vec_err < 1e-10 and sca_err < 1e-10, (name, proper, vec_err, sca_err)
        else:  # an element outside the special group must change the outputs
            assert vec_err > 1e-3 and sca_err > 1e-3, (name, vec_err, sca_err)


def pair_inputs(d, gen, n=5, t=2, l=3, e=1):
    x = torch.randn(2, n, d, generator=gen, dtype=F64)
    feats = Features(torch.randn(2, n, t, d, generator=gen, dtype=F64), torch.randn(2, n, l, generator=gen, dtype=F64))
    edges = torch.randn(2, n, n, e, generator=gen, dtype=F64)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, -1] = False
    return x, feats, edges, mask


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_attention_equivariance_dense_and_sparse(name):
    """Dense and edge-list attention layers commute with random group elements."""
    gen = torch.Generator().manual_seed(2)
    group = parse_group(name)
    torch.manual_seed(0)
    dense = EquivariantAttention(FeatureShape(2, 3), FeatureShape(4, 4), edge_dim=1, heads=2,
                                 query_shape=FeatureShape(2, 4), hidden=16, group=group).double()
    sparse = SparseEquivariantAttention(FeatureShape(2, 3), FeatureShape(4, 4), edge_dim=1, heads=2,
                                        query_shape=FeatureShape(2, 4), hidden=16, group=group).double()
    sparse.load_state_dict(dense.state_dict())
    x, feats, edges, mask = pair_inputs(group.dim, gen)

    def run_dense(x, feats):
        return dense(feats, x[:, None] - x[:, :, None], edges, mask)

    def run_sparse(x, feats):  # all pairs of the first graph as an edge list (self-loops included)
        n = x.shape[1]
        src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        index = torch.stack([src.flatten(), dst.flatten()])
        return sparse(Features(feats.vectors[0], feats.scalars[0]), index, x[0, index[1]] - x[0, index[0]],
                      edges[0, index[0], index[1]])

    out = run_dense(x, feats)
    sparse_out = run_sparse(x, feats)
    torch.testing.assert_close(sparse_out.vectors, out.vectors[0])  # same layer, both paths
    for proper in (True, False):
        g = random_element(name, gen, proper)
        shift = torch.randn(group.dim, generator=gen, dtype=F64)
        moved_x, moved_f = x @ g.T + shift, Features(feats.vectors @ g.T, feats.scalars)
        for run, ref in ((run_dense, out), (run_sparse, sparse_out)):
            moved = run(moved_x, moved_f)
            vec_err = relative_error(moved.vectors, ref.vectors @ g.T)
            sca_err = relative_error(moved.scalars, ref.scalars)
            if proper or not group.special:
                assert vec_err < 1e-10 and sca_err < 1e-10, (name, proper, vec_err, sca_err)
            else:
                assert vec_err > 1e-3 and sca_err > 1e-3, (name, vec_err, sca_err)


@pytest.mark.parametrize("name,subsets", [("SE2", ("all", "all")), ("SE2", (2, 2)), ("E2", ("all", "all")),
                                          ("SE4", ("all", "all")), ("SE4", (3, 4)), ("SO+(1,3)", ("all", "all")),
                                          ("O(1,3)", ("all", "all"))])
def test_neighbour_invariants_match_generic_formulas_any_group(name, subsets):
    """The node/pair factorization equals the generic invariants and basis of [h_j, x_i - x_j]."""
    group = parse_group(name)
    d = group.dim
    gen = torch.Generator().manual_seed(7)
    t, l, e = 4, 2, 1
    module = NeighbourInvariants(FeatureShape(t, l), e, group, *subsets, generator=gen)
    b, n = 2, 4
    h = torch.randn(b, n, t, d, dtype=F64, generator=gen)
    s = torch.randn(b, n, l, dtype=F64, generator=gen)
    x = torch.randn(b, n, d, dtype=F64, generator=gen)
    edge = torch.randn(b, n, n, e, dtype=F64, generator=gen)
    rel = x[:, None] - x[:, :, None]
    out = module(Features(h, s), rel, edge)
    fast_inv = torch.cat([out.node_invariants.unsqueeze(2).expand(b, n, n, -1), out.pair_invariants], -1)
    fast_basis = torch.cat([out.node_basis.unsqueeze(2).expand(b, n, n, -1, d), out.pair_basis], -2)
    u = torch.cat([h.unsqueeze(2).expand(b, n, n, t, d), rel.unsqueeze(-2)], -2)
    generic_inv, generic_basis = [torch.asinh(gram_upper(u, group=group))], [u]
    if group.special:
        generic_inv.append(torch.asinh(subdeterminants(u, module.triples)))
        generic_basis.append(cross_products(u, module.cross_pairs, group))
        if subsets[0] != "all":
            assert module.triples.shape == (subsets[0], d) and module.cross_pairs.shape == (subsets[1], d - 1)
    generic_inv = torch.cat(generic_inv + [edge, s.unsqueeze(2).expand(b, n, n, l)], -1)
    generic_basis = torch.cat(generic_basis, -2)
    assert fast_inv.shape[-1] == module.n_invariants == generic_inv.shape[-1]
    torch.testing.assert_close(fast_inv, generic_inv[..., module.invariant_index])
    torch.testing.assert_close(fast_basis, generic_basis[..., module.basis_index, :])


@pytest.mark.parametrize("name,cutoff", [("E2", None), ("SE2", None), ("SE2", 3.0), ("E4", None), ("SE4", 3.5),
                                         ("SO+(1,3)", None), ("O(1,3)", None)])
def test_nbody_model_equivariance_any_group(name, cutoff):
    gen = torch.Generator().manual_seed(3)
    group = parse_group(name)
    d = group.dim
    torch.manual_seed(0)
    model = NBodyModel(group=name, n_layers=2, vectors=4, scalars=8, heads=2, query_vectors=4,
                       query_scalars=8, mlp_hidden=16, cutoff=cutoff).double()
    x = torch.randn(2, 5, d, generator=gen, dtype=F64)
    v = torch.randn(2, 5, d, generator=gen, dtype=F64)
    q = torch.randn(2, 5, generator=gen, dtype=F64).sign()
    dx, dv = model(x, v, q)
    assert dx.shape == (2, 5, d)
    for proper in (True, False):
        g = random_element(name, gen, proper)
        mx, mv = model(x @ g.T + torch.randn(d, generator=gen, dtype=F64), v @ g.T, q)
        err = max(relative_error(mx, dx @ g.T), relative_error(mv, dv @ g.T))
        if proper or not group.special:
            assert err < 1e-9, (name, proper, err)
        else:
            assert err > 1e-3, (name, err)


def test_shape_errors_name_the_group():
    model = NBodyModel(group="SE3", n_layers=1, vectors=2, scalars=4, heads=2, query_vectors=2,
                       query_scalars=4, mlp_hidden=8)
    with pytest.raises(ValueError, match=r"positions has shape \[1, 3, 2\], expected \[\*, \*, 3\] "
                                         r"\(group SE3 acts on 3D vectors; 2D data needs group E2 or SE2\)"):
        model(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="cutoff needs a Euclidean group"):
        NBodyModel(group="O(1,3)", cutoff=2.0)
    with pytest.raises(ValueError, match="QM9Model's group must be SE3 or E3"):
        QM9Model(group="E2")
    with pytest.raises(ValueError, match=r"subdeterminants \(C\(3,2\) 2-sets"):
        NBodyModel(group="SE2", vectors=2, subdeterminants=4)


# --- the refactor changed nothing for E3/SE3 -------------------------------------------------

def test_paper_parameter_counts_unchanged():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(NBodyModel("SE3")) == 184_908 and count(NBodyModel("E3")) == 116_732


def test_e3_se3_outputs_equal_pre_refactor_reference():
    """Same weights as tests/data/group_reference.pt (written by fb898de, before models/groups.py),
    same inputs: the same outputs to 1e-12 in float64, dense, sampled and cutoff paths, both tasks."""
    sys.path.insert(0, str(DATA))
    try:
        import make_group_reference as generator
    finally:
        sys.path.remove(str(DATA))
    reference = torch.load(DATA / "group_reference.pt", weights_only=True)
    names = [name for name, _, _ in generator.cases()]
    assert sorted(names) == sorted(reference) and len(names) == 8
    for name, cls, config in generator.cases():
        entry = reference[name]
        assert entry["config"] == config
        model = cls(**config).double()
        model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in entry["state"].items()})
        out = generator.outputs(model, name)
        torch.testing.assert_close(out, entry["out"], rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("d", [2, 4])
def test_cell_list_radius_graph_in_other_dimensions(d):
    """Above 128 nodes the radius graph uses a cell list (3^d neighbour cells): same edges as all pairs."""
    from invattn.models.graph import _brute_force_pairs, radius_graph, radius_graph_dense

    gen = torch.Generator().manual_seed(d)
    x = 4.0 * torch.rand(2, 200, d, generator=gen, dtype=F64)
    mask = torch.ones(2, 200, dtype=torch.bool)
    mask[1, 150:] = False
    edge_index, edge_graph = radius_graph_dense(x, mask, 1.0)
    expected = _brute_force_pairs(x, mask, 1.0)
    assert edge_graph.shape[1] > 2 * 350  # more than the self-loops
    key = lambda e: sorted(map(tuple, e.t().tolist()))  # noqa: E731
    assert key(edge_graph) == key(expected)
    flat = x[mask]
    batch = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(150, dtype=torch.long)])
    torch.testing.assert_close(radius_graph(flat, 1.0, batch, dim=d), edge_index)
    with pytest.raises(ValueError, match=rf"expected \[n, 3\]"):
        radius_graph(flat, 1.0, batch)


def test_forward_data_builds_a_2d_radius_graph():
    from torch_geometric.data import Data

    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    layer = SparseEquivariantAttention(FeatureShape(1, 1), FeatureShape(2, 4), edge_dim=0, heads=2,
                                       query_shape=FeatureShape(2, 2), hidden=8, group="SE2").double()
    pos = 2.0 * torch.randn(7, 2, generator=gen, dtype=F64)
    data = Data(pos=pos, x=torch.randn(7, 1, generator=gen, dtype=F64),
                vectors=torch.randn(7, 1, 2, generator=gen, dtype=F64))
    out = layer.forward_data(data, cutoff=2.5)
    assert out.vectors.shape == (7, 2, 2)
    rot = random_element("SE2", gen)
    moved = layer.forward_data(Data(pos=pos @ rot.T, x=data.x, vectors=data.vectors @ rot.T), cutoff=2.5)
    assert relative_error(moved.vectors, out.vectors @ rot.T) < 1e-10
