"""Gated vs norm nonlinearity (issue 11): float32 invariance, collinear gradients, N-body training.

Three measurements, each for both nonlinearities between the attention layers (the models as
built use :class:`models.GatedNonlinearity`; the other variant swaps in the old
:class:`models.NormNonlinearity`):

1. float32 rotation error of a paper-sized ``QM9Model`` (SE3, seed 0) on the first ``--molecules``
   molecules of the real QM9 sample (``tests/data/qm9/qm9_sample_2000.xyz.tar.bz2``; the first 10
   of QM9, methane first, then random ones): ``|y(xR^T) - y(x)|``, worst molecule and median, in
   normalized units; at init, and with trained-looking LayerNorm/gate parameters (init + noise);
2. the largest input gradient of a paper-sized ``NBodyModel`` (SE3, float64, same two parameter
   settings) on five collinear bodies with collinear velocities;
3. test ``mse_x`` / ``mse_v`` after a short N-body training run on the demo dataset
   (``invattn simulate preset=demo``; generated into ``--data`` if missing), equal epochs.

    .venv/bin/python benchmarks/nonlinearity.py [--quick] [--epochs 4] [--data /tmp/nbody_demo]

``--quick``: 50 molecules, 1 epoch on 200 simulations. CPU timings on a shared machine are noisy;
the figures here are accuracies, not speeds.
"""
from __future__ import annotations

import _repo_path  # noqa: F401  (must come before the project's imports)

import argparse
import math
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from invattn.models import NBodyModel, NormNonlinearity, QM9Model
from invattn.pipeline.qm9.parse import parse_xyz
from invattn.pipeline.training.rotations import random_rotations

SAMPLE = _repo_path.REPO / "tests" / "data" / "qm9" / "qm9_sample_2000.xyz.tar.bz2"


def use_norm_nonlinearity(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every gated nonlinearity of ``model.backbone`` by the old norm nonlinearity."""
    backbone, dtype = model.backbone, next(model.parameters()).dtype
    for index in range(1, len(backbone.norms)):
        backbone.norms[index] = NormNonlinearity(backbone.norms[index].shape).to(dtype)
    backbone.final_norm = NormNonlinearity(backbone.final_norm.shape).to(dtype)
    return model


def perturb_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Trained-looking LayerNorm / gate parameters: gains 1 + N(0, 0.5^2), biases N(0, 0.5^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "norm" in name.split(".")[0] or "final_norm" in name:
                base = 1.0 if name.endswith("weight") and p.dim() == 1 else 0.0
                noise = 0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
                p.copy_(base + noise if p.dim() == 1 else p + noise * p.abs().mean())
    return model


def load_molecules(limit: int | None = None) -> list:
    with tarfile.open(SAMPLE) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith(".xyz")), key=lambda m: m.name)
        return [parse_xyz(tar.extractfile(m).read().decode(), m.name) for m in members[:limit]]


@torch.no_grad()
def qm9_rotation_errors(model: QM9Model, molecules: list, batch: int = 64) -> np.ndarray:
    """``|y(x R^T) - y(x)|`` per molecule, float32 model, positions given in float64."""
    gen = torch.Generator().manual_seed(1)
    errors = []
    for lo in range(0, len(molecules), batch):
        part = molecules[lo: lo + batch]
        n = max(len(m.atomic_numbers) for m in part)
        z = torch.zeros(len(part), n, dtype=torch.long)
        x = torch.zeros(len(part), n, 3, dtype=torch.float64)
        for k, m in enumerate(part):
            z[k, : len(m.atomic_numbers)] = torch.from_numpy(m.atomic_numbers.astype(np.int64))
            x[k, : len(m.atomic_numbers)] = torch.from_numpy(m.positions)
        rot = random_rotations(len(part), gen)
        bonds = torch.zeros(len(part), n, n, dtype=torch.long)
        mask = z > 0
        y = model(z, x, bonds, mask)
        y_rot = model(z, x @ rot.transpose(1, 2), bonds, mask)
        errors.append((y - y_rot).abs().double().numpy())
    return np.concatenate(errors)


def collinear_gradient(model: NBodyModel) -> float:
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
    x = (torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None] * direction).unsqueeze(0).requires_grad_(True)
    v = (torch.tensor([0.5, -0.2, 0.1, 0.3, -0.4], dtype=torch.float64)[:, None] * direction).unsqueeze(0)
    v.requires_grad_(True)
    q = torch.tensor([[1.0, -1, 1, -1, 1]], dtype=torch.float64)
    dx, dv = model(x, v, q)
    gx, gv = torch.autograd.grad(dx.sum() + dv.sum(), (x, v))
    return float(max(gx.abs().max(), gv.abs().max()))


def nbody_training(norm: bool, data: Path, epochs: int, max_sims: int | None) -> dict:
    from invattn.pipeline.config import load_config
    from invattn.pipeline.training.nbody_task import NBodyTask
    from invattn.pipeline.training.schedule import lr_factor

    overrides = ["preset=demo", f"data.dir={data}", f"train.epochs={epochs}"]
    if max_sims:
        overrides.append(f"data.max_train_sims={max_sims}")
    cfg = load_config("train_nbody", overrides)
    torch.manual_seed(int(cfg.seed))
    task = NBodyTask(cfg)
    model = task.build_model()
    if norm:
        use_norm_nonlinearity(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.optim.lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, epochs=epochs, schedule="cosine"))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in task.train_batches(epoch, "cpu"):
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, batch)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    out = task.evaluate(model, "cpu")
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 molecules, 1 epoch on 200 simulations")
    ap.add_argument("--molecules", type=int, default=300, help="QM9 sample molecules for measurement 1")
    ap.add_argument("--epochs", type=int, default=4, help="N-body training epochs per variant")
    ap.add_argument("--max-sims", type=int, default=None, help="training simulations (demo: 1000)")
    ap.add_argument("--data", default="/tmp/nbody_demo", help="demo dataset folder (made if missing)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--skip-training", action="store_true", help="only measurements 1 and 2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    limit, epochs, max_sims = (50, 1, 200) if args.quick else (args.molecules, args.epochs, args.max_sims)

    molecules = load_molecules(limit)
    settings = [(name, trained) for trained in (False, True) for name in ("norm", "gated")]
    label = lambda name, trained: f"{name:6}{' trained-looking' if trained else ' init':16}"  # noqa: E731
    print(f"1. float32 rotation error, QM9Model SE3, {len(molecules)} real QM9 molecules")
    for name, trained in settings:
        torch.manual_seed(0)
        model = QM9Model(group="SE3")
        if name == "norm":
            use_norm_nonlinearity(model)
        if trained:
            perturb_norms(model)
        err = qm9_rotation_errors(model.eval(), molecules)
        worst = int(np.argmax(err))
        print(f"   {label(name, trained)} worst {err[worst]:.2e} (gdb {molecules[worst].gdb_id}, "
              f"{len(molecules[worst].atomic_numbers)} atoms)  median {np.median(err):.2e}", flush=True)

    print("2. max input gradient, NBodyModel SE3 (float64), 5 collinear bodies")
    for name, trained in settings:
        torch.manual_seed(0)
        model = NBodyModel(group="SE3")
        if name == "norm":
            use_norm_nonlinearity(model)
        if trained:
            perturb_norms(model)
        print(f"   {label(name, trained)} {collinear_gradient(model.double()):.3g}", flush=True)

    if args.skip_training:
        return
    data = Path(args.data)
    if not (data / "train.h5").is_file():
        from invattn.cli import main as cli

        print(f"generating the demo dataset into {data} ...", flush=True)
        assert cli(["simulate", "preset=demo", f"out={data}"]) == 0
    print(f"3. N-body demo data, {epochs} epochs (train sims: {max_sims or 'all'}), test split")
    for name in ("norm", "gated"):
        m = nbody_training(name == "norm", data, epochs, max_sims)
        print(f"   {name:6} mse_x {m['test_mse_x']:.4g}  mse_v {m['test_mse_v']:.4g}  "
              f"(constant velocity mse_x {m['test_constant_velocity_mse_x']:.4g}; "
              f"{m['seconds']:.0f} s)", flush=True)
        assert math.isfinite(m["test_mse_x"])


if __name__ == "__main__":
    main()
