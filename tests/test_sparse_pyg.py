"""The sparse attention layer as a public building block on torch_geometric Data / Batch graphs."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from invattn.models import EquivariantAttention, Features, FeatureShape
from invattn.models.graph import radius_graph
from invattn.models.sparse_attention import SparseEquivariantAttention
from test_models_equivariance import random_rotation, reflection

F64 = torch.float64
TOL = 1e-10


def layer_args(group):
    return (FeatureShape(2, 3), FeatureShape(4, 8), 2, 2, FeatureShape(2, 4), 16, group)


def molecule(n, seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=g, dtype=F64) * 1.5
    edge_index = radius_graph(pos, cutoff=2.0)
    return Data(pos=pos, x=torch.randn(n, 3, generator=g, dtype=F64),
                vectors=torch.randn(n, 2, 3, generator=g, dtype=F64), edge_index=edge_index,
                edge_attr=torch.randn(edge_index.shape[1], 2, generator=g, dtype=F64))


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_batch_of_graphs_equals_graphs_one_by_one(group):
    torch.manual_seed(0)
    layer = SparseEquivariantAttention(*layer_args(group)).double()
    graphs = [molecule(n, seed) for seed, n in enumerate([6, 1, 11])]
    batch = Batch.from_data_list(graphs)
    out = layer.forward_data(batch, cutoff=2.0, cutoff_inner=1.0)
    assert out.vectors.shape == (18, 4, 3) and out.scalars.shape == (18, 8)
    start = 0
    for graph in graphs:
        alone = layer.forward_data(graph, cutoff=2.0, cutoff_inner=1.0)
        n = graph.num_nodes
        assert float((out.vectors[start:start + n] - alone.vectors).abs().max()) < TOL
        assert float((out.scalars[start:start + n] - alone.scalars).abs().max()) < TOL
        start += n


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_layer_matches_dense_layer_on_complete_graph(group):
    """All pairs (with self-loops) and no switching: exactly the dense layer."""
    torch.manual_seed(1)
    dense = EquivariantAttention(*layer_args(group)).double()
    sparse = SparseEquivariantAttention(*layer_args(group)).double()
    sparse.load_state_dict(dense.state_dict())
    n = 7
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(n, 3, generator=g, dtype=F64)
    feats = Features(torch.randn(n, 2, 3, generator=g, dtype=F64), torch.randn(n, 3, generator=g, dtype=F64))
    pair = torch.randn(n, n, 2, generator=g, dtype=F64)  # [j, i]
    j, i = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    data = Data(pos=pos, x=feats.scalars, vectors=feats.vectors,
                edge_index=torch.stack([j.flatten(), i.flatten()]), edge_attr=pair.reshape(n * n, 2))
    out = sparse.forward_data(data)  # no cutoff: every listed pair has weight 1
    ref = dense(Features(feats.vectors[None], feats.scalars[None]), (pos[None, :] - pos[:, None])[None],
                pair[None], torch.ones(1, n, dtype=torch.bool))
    assert float((out.vectors - ref.vectors[0]).abs().max()) < TOL
    assert float((out.scalars - ref.scalars[0]).abs().max()) < TOL


def test_layer_equivariance_and_radius_graph_from_batch():
    torch.manual_seed(3)
    graphs = [molecule(n, seed) for seed, n in enumerate([5, 9])]
    for graph in graphs:  # no edge_index: the layer builds the radius graph from pos and batch
        del graph.edge_index, graph.edge_attr
    layer = SparseEquivariantAttention(FeatureShape(2, 3), FeatureShape(4, 8), 0, 2, FeatureShape(2, 4),
                                       16, "E3").double()
    batch = Batch.from_data_list(graphs)
    out = layer.forward_data(batch, cutoff=2.0)
    g = torch.Generator().manual_seed(4)
    for q in (random_rotation(g), reflection(g)):
        moved = batch.clone()
        moved.pos = batch.pos @ q.T + 3.0
        moved.vectors = batch.vectors @ q.T
        rotated = layer.forward_data(moved, cutoff=2.0)
        assert float((rotated.vectors - out.vectors @ q.T).abs().max()) < TOL
        assert float((rotated.scalars - out.scalars).abs().max()) < TOL


def test_missing_fields_are_named():
    layer = SparseEquivariantAttention(*layer_args("E3")).double()
    with pytest.raises(ValueError, match="no 'pos'"):
        layer.forward_data(Data(x=torch.zeros(3, 3)))
    with pytest.raises(ValueError, match="no 'edge_index' and no cutoff"):
        layer.forward_data(Data(pos=torch.zeros(3, 3, dtype=F64), x=torch.zeros(3, 3, dtype=F64)))
    good = molecule(4, 0)
    for field, bad, match in [("x", torch.zeros(4, 5, dtype=F64), r"data.x has shape \[4, 5\], expected \[4, 3\]"),
                              ("vectors", torch.zeros(4, 3, dtype=F64), "data.vectors has shape"),
                              ("edge_attr", torch.zeros(1, 2, dtype=F64), "data.edge_attr has shape"),
                              ("edge_index", good.edge_index.clone().index_fill_(1, torch.tensor([0]), 9),
                               "outside 0..3")]:
        data = good.clone()
        setattr(data, field, bad)
        with pytest.raises(ValueError, match=match):
            layer.forward_data(data)
