"""The node-basis contraction of EquivariantAttention._combine is the same function as the plain order."""
import pytest
import torch

import invattn.models.attention as attention
from invattn.models import EquivariantAttention, Features, FeatureShape, QM9Model


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_contracted_node_basis_equals_plain_order(group, monkeypatch):
    torch.manual_seed(3)
    layer = EquivariantAttention(FeatureShape(4, 6), FeatureShape(4, 8), edge_dim=2, heads=2,
                                 query_shape=FeatureShape(4, 6), hidden=16, group=group).double()
    b, n = 2, 7
    x = torch.randn(b, n, 3, dtype=torch.float64)
    features = Features(torch.randn(b, n, 4, 3, dtype=torch.float64), torch.randn(b, n, 6, dtype=torch.float64))
    rel, edge = x[:, None] - x[:, :, None], torch.randn(b, n, n, 2, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, -2:] = False

    def run():
        features_ = Features(features.vectors.clone().requires_grad_(), features.scalars.clone())
        out = layer(features_, rel, edge, mask)
        (out.vectors.pow(2).sum() + out.scalars.pow(2).sum()).backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        return out, features_.vectors.grad, grads

    monkeypatch.setattr(attention, "CONTRACT_FACTOR", 0)  # always contract
    contracted = run()
    monkeypatch.setattr(attention, "CONTRACT_FACTOR", 10**9)  # never
    plain = run()
    assert contracted[0].vectors.abs().max() > 1e-3
    torch.testing.assert_close(contracted[0].vectors, plain[0].vectors, rtol=0, atol=1e-12)
    torch.testing.assert_close(contracted[0].scalars, plain[0].scalars, rtol=0, atol=1e-12)
    torch.testing.assert_close(contracted[1], plain[1], rtol=0, atol=1e-11)
    for a, b_ in zip(contracted[2], plain[2]):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-11)


def test_default_switch_contracts_for_molecules_not_for_five_bodies():
    """The paper-size QM9 layers take the contracted order on molecules; N-body's 5 bodies do not."""
    layer = QM9Model(group="SE3", n_layers=2).backbone.layers[1]
    k_node = layer.neighbours.n_basis - 1 - layer.neighbours.relative_cross_index.shape[0]
    assert 20 * (k_node - 3) > attention.CONTRACT_FACTOR * k_node
    assert 5 * (10 - 3) <= attention.CONTRACT_FACTOR * 10  # N-body SE3 keys: K_node = 4 + C(4,2)
