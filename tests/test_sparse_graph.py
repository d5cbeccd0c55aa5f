"""Radius graphs (torch and vesin searches) and the switching function of the sparse path."""
import pytest
import torch

from invattn.models.graph import _brute_force_pairs, check_cutoff, radius_graph, radius_graph_dense, switching_function

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def brute_force(positions, batch, cutoff):
    """Reference edge set {(j, i)}: same graph, |x_i - x_j| < cutoff, plus self-loops."""
    edges = set()
    n = positions.shape[0]
    for i in range(n):
        for j in range(n):
            if batch[i] == batch[j] and (i == j or float((positions[i] - positions[j]).norm()) < cutoff):
                edges.add((j, i))
    return edges


def clouds(sizes, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    positions = torch.cat([torch.randn(n, 3, generator=g, dtype=torch.float64) * scale for n in sizes])
    batch = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)])
    return positions, batch


@pytest.mark.parametrize("method", ["torch", "vesin"])
def test_radius_graph_matches_brute_force(method):
    positions, batch = clouds([7, 1, 12, 3])
    edges = radius_graph(positions, 2.5, batch, method=method)
    pairs = [tuple(e) for e in edges.t().tolist()]
    assert set(pairs) == brute_force(positions, batch, 2.5)
    assert len(pairs) == len(set(pairs))  # no duplicates
    keys = [i * 100 + j for j, i in pairs]
    assert keys == sorted(keys)  # sorted by target, then source


def test_methods_agree_and_cutoff_is_strict():
    positions, batch = clouds([40, 25], seed=3)
    assert torch.equal(radius_graph(positions, 3.0, batch, method="torch"),
                       radius_graph(positions, 3.0, batch, method="vesin"))
    two = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    for method in ("torch", "vesin"):  # a pair at exactly the cutoff is not an edge (its weight is 0)
        assert radius_graph(two, 1.0, method=method).t().tolist() == [[0, 0], [1, 1]]


@pytest.mark.parametrize("device", DEVICES)
def test_dense_search_on_device_matches_flat(device):
    positions, batch = clouds([5, 9, 2], seed=1)
    padded = torch.zeros(3, 9, 3, dtype=torch.float64)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    start = 0
    for k, n in enumerate([5, 9, 2]):
        padded[k, :n], mask[k, :n] = positions[start:start + n], True
        start += n
    padded[~mask] = 1e-3  # padded garbage close to real bodies must not become a neighbour
    edge_index, edge_graph = radius_graph_dense(padded.to(device), mask.to(device), 2.0)
    assert edge_index.device.type == device
    assert set(map(tuple, edge_index.cpu().t().tolist())) == brute_force(positions, batch, 2.0)
    g, j, i = edge_graph.cpu()
    assert bool(mask[g, j].all() and mask[g, i].all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell_list_matches_all_pairs(device, dtype):
    """Graphs above 128 nodes take the cell-list search: same edges, same order as all pairs,
    for clouds much wider than the cutoff, about as wide, and flat (2D) ones."""
    g = torch.Generator().manual_seed(5)
    for scale, cutoff, flat in [(8.0, 1.0, False), (1.0, 2.5, False), (5.0, 1.5, True)]:
        x = torch.randn(3, 300, 3, generator=g, dtype=torch.float64) * scale
        if flat:
            x[..., 2] = 0.0
        mask = torch.rand(3, 300, generator=g) > 0.3
        x, mask = x.to(device, dtype), mask.to(device)
        edge_index, edge_graph = radius_graph_dense(x, mask, cutoff)
        assert torch.equal(edge_graph, _brute_force_pairs(x, mask, cutoff))
        assert edge_index.shape[1] > int(mask.sum())  # more than the self-loops
    positions, batch = clouds([400, 150], seed=6, scale=4.0)
    assert torch.equal(radius_graph(positions, 2.0, batch, method="torch"),
                       radius_graph(positions, 2.0, batch, method="vesin"))


def test_switching_function_is_c2_and_bounded():
    cutoff, inner = 3.0, 2.0
    d = torch.linspace(0.0, 4.0, 4001, dtype=torch.float64, requires_grad=True)
    w = switching_function(d ** 2, cutoff, inner)
    assert float(w.detach().min()) >= 0.0 and float(w.detach().max()) <= 1.0
    assert bool((w[d <= inner] == 1).all()) and bool((w[d >= cutoff] == 0).all())
    assert bool((w[1:] <= w[:-1]).all())  # non-increasing
    (dw,) = torch.autograd.grad(w.sum(), d, create_graph=True)
    assert torch.isfinite(dw).all()
    assert float(dw.detach().abs().max()) > 0.5  # it does fall somewhere
    for edge in (inner, cutoff):  # value, first and second derivatives are continuous at both ends
        x = torch.tensor([edge - 1e-7, edge, edge + 1e-7], dtype=torch.float64, requires_grad=True)
        y = switching_function(x ** 2, cutoff, inner)
        (dy,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (d2y,) = torch.autograd.grad(dy.sum(), x)
        assert float((y - y[1]).abs().max()) < 1e-15
        assert float(dy.abs().max()) < 1e-10 and float(d2y.abs().max()) < 1e-4
    # at d = 0 (a self-loop) the gradient is 0, not NaN: no square root is taken
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (g0,) = torch.autograd.grad(switching_function(zero.pow(2), cutoff, inner).sum(), zero)
    assert float(g0) == 0.0


@pytest.mark.parametrize("cutoff, inner, match", [
    (0.0, None, "cutoff must be a positive"), (-1.0, None, "cutoff must be a positive"),
    ("5", None, "cutoff must be a positive"), (2.0, 2.0, "cutoff_inner must be"),
    (2.0, -0.5, "cutoff_inner must be"), (None, 1.0, "cutoff_inner is set but cutoff is None"),
])
def test_bad_cutoffs_are_named(cutoff, inner, match):
    with pytest.raises(ValueError, match=match):
        check_cutoff(cutoff, inner)


def test_radius_graph_input_errors():
    positions, batch = clouds([3, 3])
    with pytest.raises(ValueError, match=r"positions has shape \[6, 2\]"):
        radius_graph(positions[:, :2], 1.0, batch)
    with pytest.raises(ValueError, match="batch must be sorted"):
        radius_graph(positions, 1.0, batch.flip(0))
    with pytest.raises(ValueError, match="method must be"):
        radius_graph(positions, 1.0, batch, method="kdtree")
    assert radius_graph(positions[:0], 1.0).shape == (2, 0)
