"""Subdeterminant / cross-product sampling, checkpoints, configs and model sizes."""
import math

import pytest
import torch

from invattn.models import MODELS, NBodyModel, QM9Model, build_model

SMALL = dict(n_layers=2, vectors=6, scalars=8, heads=2, query_vectors=4, query_scalars=8, mlp_hidden=16)
T1 = SMALL["vectors"] + 1  # key/value maps see T + 1 vectors


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def subsets(model):
    return {name: buf.clone() for name, buf in model.state_dict().items()
            if name.endswith(("triples", "cross_pairs"))}


def nbody_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 5, 3, generator=gen, dtype=torch.float64),
            torch.randn(2, 5, 3, generator=gen, dtype=torch.float64),
            torch.tensor([[1.0, -1, 1, 1, -1]] * 2, dtype=torch.float64))


def test_sampled_with_k_equal_to_all_is_the_full_model():
    torch.manual_seed(31)
    full = NBodyModel("SE3", **SMALL).double()
    torch.manual_seed(31)
    sampled = NBodyModel("SE3", subdeterminants=math.comb(T1, 3), cross_products=math.comb(T1, 2),
                         sampling_seed=123, **SMALL).double()
    for name, buf in subsets(full).items():
        assert torch.equal(subsets(sampled)[name], buf), name
    batch = nbody_batch()
    for a, b in zip(full(*batch), sampled(*batch)):
        assert torch.equal(a, b)


def test_sampled_subsets_have_k_rows_and_depend_on_seed():
    a = NBodyModel("SE3", subdeterminants=5, cross_products=4, sampling_seed=1, **SMALL)
    b = NBodyModel("SE3", subdeterminants=5, cross_products=4, sampling_seed=2, **SMALL)
    sa, sb = subsets(a), subsets(b)
    assert sa["backbone.layers.1.neighbours.triples"].shape == (5, 3)
    assert sa["backbone.layers.1.neighbours.cross_pairs"].shape == (4, 2)
    # The first layer's key/value maps see velocity + x_i - x_j: 0 triples, 1 pair, kept whole.
    assert sa["backbone.layers.0.neighbours.triples"].shape == (0, 3)
    assert sa["backbone.layers.0.neighbours.cross_pairs"].tolist() == [[0, 1]]
    assert any(not torch.equal(sa[name], sb[name]) for name in sa)
    # Query maps of hidden layers see T = 6 vectors: C(6,3) = 20 > 5 triples, so they are sampled too.
    assert sa["backbone.layers.1.query.triples"].shape == (5, 3)
    # The first layer's query sees only the input velocity: no triples to sample.
    assert sa["backbone.layers.0.query.triples"].shape == (0, 3)


def test_sampling_reduces_invariants_linearly_in_k():
    sizes = {}
    for k in (2, 4, 8, 16):
        model = NBodyModel("SE3", subdeterminants=k, cross_products="all", **SMALL)
        sizes[k] = model.backbone.layers[1].neighbours.n_invariants
    assert sizes[4] - sizes[2] == 2 and sizes[16] - sizes[8] == 8


def test_checkpoint_round_trip_restores_the_sampled_subset(tmp_path):
    torch.manual_seed(32)
    saved = NBodyModel("SE3", subdeterminants=7, cross_products=5, sampling_seed=1, **SMALL).double()
    path = tmp_path / "model.pt"
    torch.save({"model": saved.state_dict(), "config": saved.config}, path)
    batch = nbody_batch(1)
    expected = saved(*batch)

    other = NBodyModel("SE3", subdeterminants=7, cross_products=5, sampling_seed=99, **SMALL).double()
    assert any(not torch.equal(subsets(other)[n], b) for n, b in subsets(saved).items())
    checkpoint = torch.load(path, weights_only=True)
    other.load_state_dict(checkpoint["model"])
    for name, buf in subsets(saved).items():
        assert torch.equal(subsets(other)[name], buf), name
    for a, b in zip(other(*batch), expected):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # The same through build_model and the saved config.
    rebuilt = build_model("nbody", **checkpoint["config"]).double()
    rebuilt.load_state_dict(checkpoint["model"])
    for a, b in zip(rebuilt(*batch), expected):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_qm9_checkpoint_round_trip_with_sampling():
    torch.manual_seed(33)
    kwargs = dict(n_layers=2, vectors=8, scalars=8, heads=2, query_vectors=4, query_scalars=8,
                  mlp_hidden=16, readout=8, subdeterminants=10, cross_products=6)
    saved = QM9Model(sampling_seed=3, **kwargs).double()
    other = QM9Model(sampling_seed=4, **kwargs).double()
    other.load_state_dict(saved.state_dict())
    z = torch.tensor([[6, 6, 8, 1, 1, 1, 1]])
    x = torch.randn(1, 7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bonds = torch.zeros(1, 7, 7, dtype=torch.long)
    torch.testing.assert_close(other(z, x, bonds), saved(z, x, bonds), atol=1e-12, rtol=0)


@pytest.mark.parametrize("option", ["subdeterminants", "cross_products"])
@pytest.mark.parametrize("bad", [0, -3, 10_000, "half", 2.0, True])
def test_invalid_sampling_options_raise(option, bad):
    with pytest.raises(ValueError, match=option):
        NBodyModel("SE3", **{option: bad}, **SMALL)


def test_sampling_option_upper_bound_is_the_largest_map():
    NBodyModel("SE3", subdeterminants=math.comb(T1, 3), cross_products=math.comb(T1, 2), **SMALL)
    with pytest.raises(ValueError, match=f"1..{math.comb(T1, 3)}"):
        NBodyModel("SE3", subdeterminants=math.comb(T1, 3) + 1, **SMALL)


def test_build_model_and_config():
    assert set(MODELS) == {"nbody", "qm9"}
    model = build_model("qm9", group="E3", pooling="mean", n_layers=2)
    assert isinstance(model, QM9Model) and model.config["pooling"] == "mean"
    assert model.config["heads"] == 8 and model.config["n_layers"] == 2
    assert all(isinstance(v, (int, float, str)) for v in model.config.values())
    again = build_model("qm9", **model.config)
    assert again.config == model.config
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match="unknown option 'n_layer'.*n_layers"):
        build_model("nbody", n_layer=3)
    with pytest.raises(ValueError, match="unknown task"):
        build_model("md17")


def test_runtime_config_keys_are_accepted():
    """pipeline/training builds NBodyModel(**cfg.model) from configs/train_nbody.yaml's keys."""
    model = NBodyModel(group="E3", subdeterminants="all", cross_products="all", sampling_seed=0)
    assert model.config["group"] == "E3"


def parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_default_nbody_sizes_match_paper_table_1():
    se3, e3 = parameters(NBodyModel("SE3")), parameters(NBodyModel("E3"))
    assert abs(se3 / 184_000 - 1) < 0.05, se3
    assert abs(e3 / 115_000 - 1) < 0.05, e3


def test_default_qm9_architecture_matches_paper():
    model = QM9Model()
    assert len(model.backbone.layers) == 7
    assert all(layer.heads == 8 for layer in model.backbone.layers)
    assert model.pooling == "sum"
    assert parameters(QM9Model("E3")) < parameters(model)


def test_buffers_follow_the_module_to_a_device_and_dtype():
    model = NBodyModel("SE3", subdeterminants=5, **SMALL).to(torch.float64)
    assert model.backbone.layers[1].neighbours.triples.dtype == torch.long  # indices stay integer
    target = "cuda" if torch.cuda.is_available() else "meta"
    moved = NBodyModel("SE3", subdeterminants=5, **SMALL).to(target)
    devices = {buf.device.type for buf in moved.buffers()}
    assert devices == {target}
