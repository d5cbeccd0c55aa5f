"""The gated nonlinearity (issue 11): smooth and bounded in gain where vectors vanish, equivariant."""
import pytest
import torch

from invattn.models import GatedNonlinearity, NormNonlinearity
from invattn.models.features import Features, FeatureShape
from invattn.pipeline.training.rotations import random_rotations

F64 = torch.float64
REFLECTION = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))


def issue_vectors(t: float) -> torch.Tensor:
    """The smallest case of issue 11: channel 0 passes through 0 along x."""
    return torch.tensor([[t, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 2]], dtype=F64)


def trained_looking(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Parameters far from their init (LayerNorm gains/biases and weights of order 1-3)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(2.0 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


@pytest.mark.parametrize("scalars", [0, 8])
def test_output_is_continuous_across_a_vanishing_vector(scalars):
    torch.manual_seed(0)
    gated = trained_looking(GatedNonlinearity(FeatureShape(4, scalars)).double(), 1)
    s = torch.randn(scalars, dtype=F64)
    for t in (1e-2, 1e-4, 1e-7):
        plus = gated(Features(issue_vectors(t), s)).vectors[0]
        minus = gated(Features(issue_vectors(-t), s)).vectors[0]
        # Smooth and odd in v_0 near 0: the output is about (gain) * t, with gain <= 1.
        assert (plus - minus).abs().max() <= 2 * t * 1.01, (t, plus, minus)
        torch.testing.assert_close(plus, -minus, atol=1e-6 * t, rtol=0)
    # The old norm nonlinearity jumps there (issue 11's report: +0.275 / -0.275 at t = -+1e-2).
    old = NormNonlinearity(FeatureShape(4, 0)).double()
    jump = old(Features(issue_vectors(-1e-2), s[:0])).vectors[0, 0] - old(Features(issue_vectors(1e-2), s[:0])).vectors[0, 0]
    assert jump > 0.5


def test_input_gain_is_bounded_at_and_near_zero_vectors():
    """Jacobian of all outputs w.r.t. the vectors, with trained-looking parameters."""
    shape = FeatureShape(4, 6)
    gated = trained_looking(GatedNonlinearity(shape).double(), 2)
    old = trained_looking(NormNonlinearity(shape).double(), 2)
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(6, dtype=F64, generator=gen)
    states = [torch.zeros(4, 3, dtype=F64), 1e-5 * torch.randn(4, 3, dtype=F64, generator=gen),
              torch.randn(4, 3, dtype=F64, generator=gen), 30 * torch.randn(4, 3, dtype=F64, generator=gen)]
    # Block (t, s) of the Jacobian has norm <= [t == s] + sqrt(T) |W_ts| / 4 + 1 (W: the gate's
    # weights on log(1 + |v_s|^2)); the spectral norm of those block norms bounds the gain.
    blocks = torch.eye(4, dtype=F64) + gated.gate.weight[:, 6:].detach().abs() * 4 ** 0.5 / 4 + 1
    bound = torch.linalg.matrix_norm(blocks, ord=2).item()
    assert bound < 20
    for v in states:
        jac = torch.autograd.functional.jacobian(lambda x: gated(Features(x, s)).vectors, v)
        gain = torch.linalg.matrix_norm(jac.reshape(12, 12), ord=2).item()
        assert torch.isfinite(jac).all() and gain <= bound, (gain, bound)
    jac_old = torch.autograd.functional.jacobian(lambda x: old(Features(x, s)).vectors, states[0])
    assert jac_old.abs().max() > 100  # what the gate fixes


def test_gradcheck_through_exact_zeros():
    torch.manual_seed(4)
    gated = trained_looking(GatedNonlinearity(FeatureShape(3, 4)).double(), 5)
    v = torch.randn(5, 3, 3, dtype=F64)
    v[0] = 0.0  # every channel vanishes
    v[1, 0] = 0.0  # one channel vanishes
    v[2, 1] = 1e-9
    s = torch.randn(5, 4, dtype=F64)
    v.requires_grad_(True)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: tuple(gated(Features(a, b))), (v, s))
    assert gated(Features(v, s)).vectors[0].abs().max() == 0


def test_gated_nonlinearity_is_o3_equivariant_and_node_wise():
    torch.manual_seed(6)
    gated = trained_looking(GatedNonlinearity(FeatureShape(4, 5)).double(), 7)
    gen = torch.Generator().manual_seed(8)
    v = torch.randn(7, 4, 3, dtype=F64, generator=gen)
    v[2] = 0.0
    s = torch.randn(7, 5, dtype=F64, generator=gen)
    out = gated(Features(v, s))
    for rot in (random_rotations(1, gen)[0], random_rotations(1, gen)[0] @ REFLECTION):
        moved = gated(Features(v @ rot.T, s))
        torch.testing.assert_close(moved.vectors, out.vectors @ rot.T, atol=1e-13, rtol=0)
        torch.testing.assert_close(moved.scalars, out.scalars, atol=1e-13, rtol=0)
    perm = torch.randperm(7, generator=gen)
    permuted = gated(Features(v[perm], s[perm]))
    torch.testing.assert_close(permuted.vectors, out.vectors[perm], atol=1e-14, rtol=0)


@pytest.mark.parametrize("shape", [(4, 24), (8, 64), (4, 0), (0, 6)])
def test_parameter_count_and_empty_channels(shape):
    t, l = shape
    gated = GatedNonlinearity(FeatureShape(t, l))
    assert sum(p.numel() for p in gated.parameters()) == 2 * l + (l + t + 1) * t * (t > 0)
    out = gated(Features(torch.randn(2, t, 3), torch.randn(2, l)))
    assert out.shape == FeatureShape(t, l) and torch.isfinite(out.vectors).all()
