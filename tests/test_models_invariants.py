"""Building blocks of models/: invariants, Phi, the factored key/value inputs, attention."""
import doctest
import importlib
import math

import pytest
import torch

from invattn.models import (EquivariantAttention, EquivariantMap, Features, FeatureShape, NeighbourInvariants,
                    NormNonlinearity, Sampling, cross_products, gram_upper, masked_softmax, subdeterminants)
from invattn.models.invariants import choose_combinations, combinations_index, resolve_subset_size
from test_models_equivariance import random_rotation

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


REFLECTION = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))


@pytest.mark.parametrize("module", ["invattn.models.features", "invattn.models.invariants", "invattn.models.equivariant_map",
                                    "invattn.models.nonlinearity", "invattn.models.attention", "invattn.models.nbody",
                                    "invattn.models.qm9", "invattn.models.registry"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), extraglobs={"torch": torch})
    assert result.failed == 0 and result.attempted > 0


def test_gram_upper_matches_scalar_products():
    v = torch.randn(4, 5, 3, dtype=F64)
    g = gram_upper(v)
    rows, cols = torch.triu_indices(5, 5)
    assert g.shape == (4, 15)
    torch.testing.assert_close(g, (v[:, rows] * v[:, cols]).sum(-1))


def test_subdeterminants_equal_det_and_flip_under_reflection():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(6, 5, 3, dtype=F64, generator=gen)
    triples = combinations_index(5, 3)
    d = subdeterminants(v, triples)
    reference = torch.linalg.det(torch.stack([v[:, t] for t in triples.tolist()], dim=1))
    torch.testing.assert_close(d, reference)
    rot = random_rotation(gen)
    torch.testing.assert_close(subdeterminants(v @ rot.T, triples), d)  # SO(3)-invariant
    torch.testing.assert_close(subdeterminants(v @ REFLECTION.T, triples), -d)  # pseudoscalar


def test_subdeterminant_gradient_exact_on_planar_vectors():
    """torch.linalg.det's backward is unreliable on singular matrices; the triple product is exact."""
    v = torch.randn(2, 4, 3, dtype=F64)
    v[..., 2] = 0.0  # all vectors in the xy-plane: every 3x3 subdeterminant is singular (= 0)
    v.requires_grad_(True)
    triples = combinations_index(4, 3)
    assert subdeterminants(v, triples).abs().max() == 0
    assert torch.autograd.gradcheck(lambda x: subdeterminants(x, triples), (v,))
    (grad,) = torch.autograd.grad(subdeterminants(v, triples).sum(), v)
    assert torch.isfinite(grad).all() and grad[..., 2].abs().max() > 0  # d det / dz = cross product


def test_cross_products_are_equivariant_pseudovectors():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(3, 4, 3, dtype=F64, generator=gen)
    pairs = combinations_index(4, 2)
    c = cross_products(v, pairs)
    rot = random_rotation(gen)
    torch.testing.assert_close(cross_products(v @ rot.T, pairs), c @ rot.T)
    torch.testing.assert_close(cross_products(v @ REFLECTION.T, pairs), -(c @ REFLECTION.T))


def test_choose_combinations_full_sampled_and_reproducible():
    assert choose_combinations(6, 3).tolist() == combinations_index(6, 3).tolist()
    assert choose_combinations(6, 3, 20).tolist() == combinations_index(6, 3).tolist()
    a = choose_combinations(8, 3, 10, torch.Generator().manual_seed(3))
    b = choose_combinations(8, 3, 10, torch.Generator().manual_seed(3))
    c = choose_combinations(8, 3, 10, torch.Generator().manual_seed(4))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    every = [tuple(t) for t in combinations_index(8, 3).tolist()]
    rows = [tuple(t) for t in a.tolist()]
    assert len(set(rows)) == 10 and set(rows) <= set(every)
    assert rows == sorted(rows, key=every.index)  # kept in canonical order


@pytest.mark.parametrize("bad", [0, -1, 57, True, 2.5, "some", None])
def test_resolve_subset_size_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="subdeterminants"):
        resolve_subset_size(bad, 56, "subdeterminants")


def test_resolve_subset_size_accepts_all_and_range():
    assert resolve_subset_size("all", 56, "x") == 56
    assert resolve_subset_size(1, 56, "x") == 1 and resolve_subset_size(56, 56, "x") == 56


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_equivariant_map_equivariance(group):
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    phi = EquivariantMap(FeatureShape(4, 3), FeatureShape(5, 2), hidden=16, group=group).double()
    v = torch.randn(7, 4, 3, dtype=F64, generator=gen)
    s = torch.randn(7, 3, dtype=F64, generator=gen)
    out = phi(Features(v, s))
    assert out.vectors.shape == (7, 5, 3) and out.scalars.shape == (7, 2)
    assert out.vectors.abs().max() > 1e-3
    for _ in range(3):
        rot = random_rotation(gen)
        moved = phi(Features(v @ rot.T, s))
        assert (moved.vectors - out.vectors @ rot.T).abs().max() < 1e-12
        assert (moved.scalars - out.scalars).abs().max() < 1e-12
    mirrored = phi(Features(v @ REFLECTION.T, s))
    error = (mirrored.vectors - out.vectors @ REFLECTION.T).abs().max()
    if group == "E3":
        assert error < 1e-12
    else:
        assert error > 1e-4  # subdeterminants and cross products break reflection symmetry


def test_equivariant_map_without_input_vectors_gives_zero_vectors():
    phi = EquivariantMap(FeatureShape(0, 4), FeatureShape(3, 2), hidden=8)
    out = phi(Features(torch.zeros(6, 0, 3), torch.randn(6, 4)))
    assert out.vectors.shape == (6, 3, 3) and out.vectors.abs().max() == 0


def test_features_repr_and_shape():
    f = Features(torch.zeros(2, 5, 4, 3), torch.zeros(2, 5, 16))
    assert repr(f) == "Features(vectors=[2, 5, 4, 3], scalars=[2, 5, 16])"
    assert f.shape == FeatureShape(4, 16) and f.shape.flat_dim == 28


def test_norm_nonlinearity_equivariant_and_finite_at_zero():
    gen = torch.Generator().manual_seed(6)
    nl = NormNonlinearity(FeatureShape(4, 3)).double()
    v = torch.randn(5, 4, 3, dtype=F64, generator=gen)
    v[0] = 0.0  # zero vectors
    v.requires_grad_(True)
    s = torch.randn(5, 3, dtype=F64, generator=gen)
    out = nl(Features(v, s))
    rot = random_rotation(gen) @ REFLECTION
    torch.testing.assert_close(nl(Features(v @ rot.T, s)).vectors, out.vectors @ rot.T)
    assert out.vectors[0].abs().max() == 0
    (grad,) = torch.autograd.grad(out.vectors.sum(), v)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("group,subsets", [("SE3", ("all", "all")), ("SE3", (7, 5)), ("E3", ("all", "all"))])
def test_neighbour_invariants_match_generic_formulas(group, subsets):
    """The node/pair factorization equals Gram, subdeterminants and cross products of [h_j, x_i - x_j]."""
    gen = torch.Generator().manual_seed(7)
    t, l, e = 4, 3, 2
    module = NeighbourInvariants(FeatureShape(t, l), e, group, *subsets, generator=gen)
    b, n = 2, 5
    h = torch.randn(b, n, t, 3, dtype=F64, generator=gen)
    s = torch.randn(b, n, l, dtype=F64, generator=gen)
    x = torch.randn(b, n, 3, dtype=F64, generator=gen)
    edge = torch.randn(b, n, n, e, dtype=F64, generator=gen)
    rel = x[:, None] - x[:, :, None]  # neighbour-major: rel[b, j, i] = x_i - x_j
    out = module(Features(h, s), rel, edge)
    fast_inv = torch.cat([out.node_invariants.unsqueeze(2).expand(b, n, n, -1), out.pair_invariants], -1)
    fast_basis = torch.cat([out.node_basis.unsqueeze(2).expand(b, n, n, -1, 3), out.pair_basis], -2)

    u = torch.cat([h.unsqueeze(2).expand(b, n, n, t, 3), rel.unsqueeze(-2)], -2)  # [h_j..., x_i - x_j]
    generic_inv = [torch.asinh(gram_upper(u))]
    generic_basis = [u]
    if group == "SE3":
        generic_inv.append(torch.asinh(subdeterminants(u, module.triples)))
        generic_basis.append(cross_products(u, module.cross_pairs))
    generic_inv += [edge, s.unsqueeze(2).expand(b, n, n, l)]
    generic_inv, generic_basis = torch.cat(generic_inv, -1), torch.cat(generic_basis, -2)

    assert fast_inv.shape[-1] == module.n_invariants == generic_inv.shape[-1]
    assert sorted(module.invariant_index.tolist()) == list(range(module.n_invariants))
    torch.testing.assert_close(fast_inv, generic_inv[..., module.invariant_index])
    torch.testing.assert_close(fast_basis, generic_basis[..., module.basis_index, :])
    if subsets == (7, 5):
        assert module.triples.shape == (7, 3) and module.cross_pairs.shape == (5, 2)


def naive_attention(layer, features, rel, edge, mask):
    """Eq. 1-3, 9-12 computed from fully materialized per-pair inputs, keys and values (reference).

    Uses i-major indexing ``[b, i, j]`` and plain softmax, independent of the layer's layout tricks.
    """
    b, n = mask.shape
    inputs = layer.neighbours(features, rel, edge)  # neighbour-major [b, j, i]
    inv = torch.cat([inputs.node_invariants.unsqueeze(2).expand(b, n, n, -1), inputs.pair_invariants], -1)
    node_basis = inputs.node_basis.unsqueeze(2).expand(b, n, n, -1, 3)
    inv, node_basis, pair_basis = inv.transpose(1, 2), node_basis.transpose(1, 2), inputs.pair_basis.transpose(1, 2)
    kn, kp = node_basis.shape[-2], pair_basis.shape[-2]

    def apply(mlp, shape):  # full g, then the documented [node | pair | scalars] layout
        coef = mlp(inv)
        t = shape.vectors
        node_c = coef[..., :t * kn].reshape(b, n, n, t, kn)
        pair_c = coef[..., t * kn:t * (kn + kp)].reshape(b, n, n, t, kp)
        return node_c @ node_basis + pair_c @ pair_basis, coef[..., t * (kn + kp):]

    q = layer.query(features)
    kv, ks = apply(layer.key, layer.query_shape)
    vv, vs = apply(layer.value, layer.out_shape)
    h = layer.heads
    out_v = torch.zeros(b, n, layer.out_shape.vectors, 3, dtype=rel.dtype)
    out_s = torch.zeros(b, n, layer.out_shape.scalars, dtype=rel.dtype)
    tq, lq = layer.query_shape.vectors // h, layer.query_shape.scalars // h
    tv, lv = layer.out_shape.vectors // h, layer.out_shape.scalars // h
    for head in range(h):
        qv, qs = slice(head * tq, (head + 1) * tq), slice(head * lq, (head + 1) * lq)
        ov, os_ = slice(head * tv, (head + 1) * tv), slice(head * lv, (head + 1) * lv)
        qf = torch.cat([q.vectors[:, :, qv].flatten(-2), q.scalars[..., qs]], -1)
        kf = torch.cat([kv[..., qv, :].flatten(-2), ks[..., qs]], -1)
        logits = (qf.unsqueeze(2) * kf).sum(-1) / math.sqrt(qf.shape[-1])  # [b, i, j]
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        w = torch.softmax(logits, dim=-1)  # every real row has its self-edge, so no empty rows here
        out_v[:, :, ov] = torch.einsum("bij,bijtc->bitc", w, vv[..., ov, :])
        out_s[..., os_] = torch.einsum("bij,bijl->bil", w, vs[..., os_])
    return out_v, out_s


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_attention_matches_naive_reference(group):
    torch.manual_seed(8)
    layer = EquivariantAttention(FeatureShape(4, 6), FeatureShape(4, 8), edge_dim=2, heads=2,
                                 query_shape=FeatureShape(4, 6), hidden=16, group=group,
                                 subdeterminants=Sampling(6),  # queries: all 4 triples; keys/values: 6 of 10
                                 generator=torch.Generator().manual_seed(1)).double()
    b, n = 3, 6
    feats = Features(torch.randn(b, n, 4, 3, dtype=F64), torch.randn(b, n, 6, dtype=F64))
    x = torch.randn(b, n, 3, dtype=F64)
    rel = x[:, None] - x[:, :, None]  # [b, j, i] = x_i - x_j
    edge = torch.randn(b, n, n, 2, dtype=F64)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    out = layer(feats, rel, edge, mask)
    ref_v, ref_s = naive_attention(layer, feats, rel, edge, mask)
    torch.testing.assert_close(out.vectors[mask], ref_v[mask])
    torch.testing.assert_close(out.scalars[mask], ref_s[mask])
    assert out.vectors[~mask].abs().max() == 0 and out.scalars[~mask].abs().max() == 0


def test_masked_softmax_fully_masked_row_is_zero_not_nan():
    logits = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    w = masked_softmax(logits, mask, -1)
    assert torch.isfinite(w).all() and w[1].abs().max() == 0
    torch.testing.assert_close(w[0].sum(), torch.tensor(1.0))
    w.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible by heads"):
        EquivariantAttention(FeatureShape(2, 4), FeatureShape(3, 8), 1, heads=2,
                             query_shape=FeatureShape(2, 4), hidden=8)
