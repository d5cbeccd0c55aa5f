"""Issue 11 at the model level: float32 invariance on real QM9 molecules, bounded gradients on
degenerate geometry, positions far from the origin, parameter counts, checkpoint format, pooling."""
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from invattn.models import NBodyModel, QM9Model
from invattn.models.registry import MODEL_FORMAT
from invattn.pipeline.config import load_config
from invattn.pipeline.qm9.parse import parse_xyz
from invattn.pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from invattn.pipeline.training.rotations import random_rotations

F64 = torch.float64
SAMPLE = Path(__file__).parent / "data" / "qm9" / "qm9_sample_2000.xyz.tar.bz2"
# A reduced QM9 model (3 layers) keeps 2 x 2000 molecule passes to seconds; the paper's depth
# would only compound what each layer does.
QM9_REDUCED = dict(n_layers=3, vectors=4, scalars=16, heads=4, query_vectors=4, query_scalars=16,
                   mlp_hidden=16, readout=16)
SMALL_NBODY = dict(n_layers=2, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8, mlp_hidden=16)


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(min(2, saved))
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def molecules():
    with tarfile.open(SAMPLE) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".xyz")]
        mols = [parse_xyz(tar.extractfile(m).read().decode(), m.name) for m in members]
    assert len(mols) == 2000
    return sorted(mols, key=lambda m: len(m.atomic_numbers))  # similar sizes batch with little padding


def trained_looking_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move LayerNorm gains/biases and gate parameters away from init, as training does.

    At init (gain 1, bias 0) the old norm nonlinearity happened to hide its problem; with biases
    of order 0.5 it turned float32 noise on methane's carbon into 2e-3 rotation errors.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if name.startswith(("norms.", "final_norm.")):
                noise = 0.5 * torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
                base = 1.0 if name.endswith("scalar_norm.weight") or name.endswith("vector_norm.weight") else 0.0
                p.copy_(base + noise if p.dim() == 1 else p + noise * p.abs().mean())
    return model


def pack(mols):
    n = max(len(m.atomic_numbers) for m in mols)
    z = torch.zeros(len(mols), n, dtype=torch.long)
    x = torch.zeros(len(mols), n, 3, dtype=F64)
    for k, m in enumerate(mols):
        z[k, : len(m.atomic_numbers)] = torch.from_numpy(m.atomic_numbers.astype(np.int64))
        x[k, : len(m.atomic_numbers)] = torch.from_numpy(m.positions)
    return z, x, torch.zeros(len(mols), n, n, dtype=torch.long), z > 0


@torch.no_grad()
def test_float32_rotation_invariance_on_every_real_qm9_molecule(molecules):
    torch.manual_seed(0)
    model = trained_looking_norms(QM9Model(group="SE3", **QM9_REDUCED)).eval()
    gen = torch.Generator().manual_seed(1)
    errors, scale = [], []
    for lo in range(0, len(molecules), 250):
        z, x, bonds, mask = pack(molecules[lo: lo + 250])
        rot = random_rotations(len(z), gen)
        y = model(z, x, bonds, mask)
        errors.append((y - model(z, x @ rot.transpose(1, 2), bonds, mask)).abs())
        scale.append(y.abs())
    errors, scale = torch.cat(errors), torch.cat(scale)
    worst = int(errors.argmax())
    report = (f"worst molecule gdb {molecules[worst].gdb_id} ({len(molecules[worst].atomic_numbers)} atoms): "
              f"{errors[worst]:.2e}; median {errors.median():.2e}; output scale {scale.median():.2f}")
    print(report)
    # Generic float32 level (a few ulps of the output), for symmetric molecules too; the old
    # norm nonlinearity gave 1.4e-5 on methane (gdb 1) with this model and these parameters.
    assert errors.max() < 5e-6, report
    methane = next(k for k, m in enumerate(molecules) if m.gdb_id == 1)
    assert errors[methane] < 2e-6, report


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_collinear_gradients_match_finite_differences_and_are_bounded(group):
    torch.manual_seed(22)
    model = trained_looking_norms(NBodyModel(group=group, **SMALL_NBODY)).double()
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=F64)
    x = (torch.linspace(-2, 2, 5, dtype=F64)[:, None] * direction).unsqueeze(0).requires_grad_(True)
    v = (torch.tensor([0.5, -0.2, 0.1, 0.3, -0.4], dtype=F64)[:, None] * direction).unsqueeze(0)
    v.requires_grad_(True)
    q = torch.tensor([[1.0, -1, 1, -1, 1]], dtype=F64)
    f = lambda a, b: torch.cat(model(a, b, q), -1)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, v), atol=1e-6)
    jx, jv = torch.autograd.functional.jacobian(f, (x, v))
    gain = max(jx.abs().max().item(), jv.abs().max().item())
    assert gain < 5, gain  # the norm nonlinearity gave 39 here (and 1e4-1e5 at paper size)


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_planar_molecule_gradients_are_bounded(group, molecules):
    """Formaldehyde (gdb 6, planar) and methane (gdb 1, a carbon whose vectors vanish)."""
    torch.manual_seed(23)
    model = trained_looking_norms(QM9Model(group=group, **QM9_REDUCED)).double()
    picked = [m for m in molecules if m.gdb_id in (1, 6)]
    for m in picked:
        z, x, bonds, mask = pack([m])
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda p: model(z, p, bonds, mask), (x,), atol=1e-6)
        (grad,) = torch.autograd.grad(model(z, x, bonds, mask).sum(), x)
        assert grad.abs().max() < 100, (m.gdb_id, grad.abs().max())


def test_float32_results_do_not_depend_on_where_the_system_sits():
    torch.manual_seed(24)
    gen = torch.Generator().manual_seed(25)
    model = NBodyModel(group="SE3", **SMALL_NBODY)  # float32 parameters
    x = torch.randn(3, 5, 3, dtype=F64, generator=gen)
    v = torch.randn(3, 5, 3, dtype=F64, generator=gen)
    q = torch.tensor([[1.0, -1, 1, -1, 1]] * 3, dtype=F64)
    shift = torch.tensor([1e4, -2e4, 3e4], dtype=F64)
    dx, dv = model(x, v, q)
    dx_far, dv_far = model(x + shift, v, q)
    assert dx.dtype == torch.float32
    torch.testing.assert_close(dx_far, dx, atol=2e-6, rtol=0)
    torch.testing.assert_close(dv_far, dv, atol=2e-6, rtol=0)

    qm9 = QM9Model(group="SE3", **QM9_REDUCED)
    z = torch.tensor([[6, 8, 1, 1]])
    pos = torch.tensor([[[-0.0089, 0.5272, 0.0], [0.0006, -0.6863, 0.0],
                         [0.9178, 1.1181, 0.0], [-0.9378, 1.1037, 0.0]]], dtype=F64)
    bonds = torch.zeros(1, 4, 4, dtype=torch.long)
    torch.testing.assert_close(qm9(z, pos + shift, bonds), qm9(z, pos, bonds), atol=2e-6, rtol=0)


def test_data_paths_centre_positions_before_the_float32_cast(nbody_tiny):
    from invattn.pipeline.nbody import NBodyWindows
    from invattn.pipeline.qm9.dataset import QM9Batch
    from invattn.pipeline.training.qm9_task import QM9Task

    data = NBodyWindows(nbody_tiny / "test.h5", delta_frames=5, train=False)
    b64 = next(data.batches(0, 16, dtype=F64))
    assert b64.positions.mean(1).abs().max() < 1e-12
    starts = data.start_frames(0)[:16]
    raw = torch.from_numpy(data.positions[np.arange(16), starts])
    torch.testing.assert_close(b64.positions, raw - raw.mean(1, keepdim=True), atol=1e-12, rtol=0)
    torch.testing.assert_close(b64.delta_positions,
                               torch.from_numpy(data.positions[np.arange(16), starts + 5]) - raw)

    # QM9: a molecule 1e4 angstrom away, centred in float64 by the task before the cast.
    pos = torch.tensor([[[1e4 + 0.1, 2e4, 0.0], [1e4 - 0.1, 2e4, 0.3], [0.0, 0.0, 0.0]]], dtype=F64)
    mask = torch.tensor([[True, True, False]])
    batch = QM9Batch(positions=pos, mask=mask, atomic_numbers=torch.tensor([[6, 8, 0]]),
                     target=torch.zeros(1, dtype=F64), bond_types=torch.zeros(1, 3, 3, dtype=torch.long),
                     n_atoms=torch.tensor([2]), gdb_id=torch.tensor([1]),
                     bond_perception_failed=torch.tensor([False]))
    moved = QM9Task._to(type("T", (), {"dtype": torch.float32})(), batch, "cpu")
    expected = torch.tensor([[[0.1, 0.0, -0.15], [-0.1, 0.0, 0.15], [0.0, 0.0, 0.0]]])
    assert moved["positions"].dtype == torch.float32 and moved["target"].dtype == F64
    torch.testing.assert_close(moved["positions"], expected, atol=1e-6, rtol=0)


def test_paper_parameter_counts_within_ten_percent():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    se3, e3 = count(NBodyModel(group="SE3")), count(NBodyModel(group="E3"))
    assert abs(se3 / 184_000 - 1) < 0.10 and abs(e3 / 115_000 - 1) < 0.10, (se3, e3)


def test_old_checkpoints_are_refused_with_a_clear_message(tmp_path):
    model = NBodyModel(group="E3", **SMALL_NBODY)
    state = {"model": model.state_dict(), "epoch": 1, "config": {"task": "nbody"}}
    new = save_checkpoint(state, tmp_path / "new.pt")
    assert load_checkpoint(new)["model_format"] == MODEL_FORMAT
    old = tmp_path / "old.pt"
    torch.save(state, old)  # written before checkpoints carried a model format
    with pytest.raises(ValueError, match=r"old\.pt holds model format 1 .*retrain"):
        load_checkpoint(old)


def test_qm9_config_pools_intensive_default_target_by_mean():
    cfg = load_config("train_qm9")
    assert cfg.target in ("homo", "lumo", "gap") and cfg.model.pooling == "mean"
