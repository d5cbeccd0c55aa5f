"""GPU readiness in one run: equivariance with TF32 off and on, training steps in float32 and bf16.

    .venv/bin/python benchmarks/gpu_check.py                    # on a CUDA machine, under 5 minutes
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick   # dry run of the same code on a CPU

1. Equivariance, float32, TF32 off and on: the largest error of the N-body models (SE(3) and E(3),
   dense and sparse) under random rotations (reflections too for E(3)) plus translations, and
   under a permutation of the bodies; the QM9 models' invariance (real molecules). TF32 rounds
   matrix products to 10 mantissa bits, so its errors are expected near 1e-3 relative; the
   float32 ones (TF32 off) must stay under the unit tests' 2e-4.
2. Training steps (forward + backward + Adam): N-body (batch 128, 5 bodies) and QM9 (real
   molecules), float32 and bf16 autocast: ms per step, whether the loss and every gradient are
   finite, and the bf16 outputs' relative difference to float32.

Prints one table per part; exits 1 if a float32 equivariance error is over tolerance or a step
gives a non-finite loss or gradient. Stops adding checks once ``--budget`` seconds are used.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time

import _repo_path  # noqa: F401  (repository on sys.path)

FLOAT32_TOLERANCE = 2e-4  # as tests/test_models_equivariance.py
TF32_TOLERANCE = 2e-2


def random_orthogonal(generator, proper: bool):
    import torch

    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q.float()


def set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def nbody_error(model, device, batch: int, trials: int = 4) -> tuple[float, float]:
    """Largest relative error under (improper for E3) rotations + translations, and under a permutation."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(batch, 5, 3, generator=gen), torch.randn(batch, 5, 3, generator=gen)
    q = torch.randint(0, 2, (batch, 5), generator=gen).float() * 2 - 1
    x, v, q = x.to(device), v.to(device), q.to(device)
    with torch.no_grad():
        dx, dv = model(x, v, q)
        scale = max(dx.abs().max().item(), dv.abs().max().item(), 1e-12)
        worst = 0.0
        for trial in range(trials):
            rot = random_orthogonal(gen, proper=model.group == "SE3" or trial % 2 == 0).to(device)
            shift = (torch.randn(3, generator=gen) * 5).to(device)
            dx2, dv2 = model(x @ rot.T + shift, v @ rot.T, q)
            worst = max(worst, (dx2 - dx @ rot.T).abs().max().item(), (dv2 - dv @ rot.T).abs().max().item())
        perm = torch.randperm(5, generator=gen).to(device)
        dx3, dv3 = model(x[:, perm], v[:, perm], q[:, perm])
        permuted = max((dx3 - dx[:, perm]).abs().max().item(), (dv3 - dv[:, perm]).abs().max().item())
    return worst / scale, permuted / scale


def qm9_error(model, molecules, device, trials: int = 4) -> tuple[float, float]:
    """Largest relative change of the (invariant) prediction under isometries, and under a permutation."""
    import torch

    z, x, bonds, mask = (t.to(device) for t in molecules)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = model(z, x, bonds, mask)
        scale = max(y.abs().max().item(), 1e-12)
        worst = 0.0
        for trial in range(trials):
            rot = random_orthogonal(gen, proper=model.group == "SE3" or trial % 2 == 0).to(device)
            y2 = model(z, x @ rot.T + (torch.randn(3, generator=gen) * 5).to(device), bonds, mask)
            worst = max(worst, (y2 - y).abs().max().item())
        perm = torch.randperm(z.shape[1], generator=gen).to(device)
        y3 = model(z[:, perm], x[:, perm], bonds[:, perm][:, :, perm], mask[:, perm])
    return worst / scale, (y3 - y).abs().max().item() / scale


def time_steps(model, loss_fn, device, dtype_name: str, steps: int) -> dict:
    """Train ``steps`` steps (after one warm-up); float32 or bf16 autocast."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    finite = True

    def step():
        nonlocal finite
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bf16"):
            loss = loss_fn()
        loss.float().backward()
        finite &= bool(torch.isfinite(loss).item()) and all(
            bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
        optimizer.step()
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return {"ms": 1000 * (time.perf_counter() - start) / max(steps, 1), "finite": finite}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="small batches, few steps (smoke test)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds after which no new check starts")
    args = parser.parse_args(argv)

    import torch

    from invattn.models import NBodyModel, QM9Model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    started = time.perf_counter()
    nbody_batch, qm9_batch, steps = (8, 4, 1) if args.quick else (128, 64, 10)
    spec = importlib.util.spec_from_file_location("bench_qm9_speed", _repo_path.HERE / "qm9_speed.py")
    qm9_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qm9_speed)
    molecules = qm9_speed.load_molecules(qm9_batch)  # real QM9 molecules, padded
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {device} ({name})")

    def make(task: str, config: dict):
        """Default-size model, or a small one for --quick."""
        torch.manual_seed(0)
        if args.quick:
            config = dict(n_layers=2, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8,
                          mlp_hidden=16, **config, **({"readout": 8} if task == "qm9" else {}))
        return (NBodyModel if task == "nbody" else QM9Model)(**config).to(device)

    failed = False
    print("\n1. Equivariance, float32 (relative max error; tolerance "
          f"{FLOAT32_TOLERANCE:g} with TF32 off, {TF32_TOLERANCE:g} with TF32 on)")
    print(f"{'model':26} {'TF32':>5} {'isometry':>10} {'permutation':>12}  verdict")
    checks = [("nbody SE3 dense", "nbody", dict(group="SE3")), ("nbody E3 dense", "nbody", dict(group="E3")),
              ("nbody SE3 sparse (cutoff 2)", "nbody", dict(group="SE3", cutoff=2.0)),
              ("nbody E3 sparse (cutoff 2)", "nbody", dict(group="E3", cutoff=2.0)),
              ("qm9 SE3 dense", "qm9", dict(group="SE3")), ("qm9 E3 sparse (5 A)", "qm9", dict(group="E3", cutoff=5.0))]
    for label, task, config in checks:
        model = make(task, config)
        for tf32 in (False, True):
            if time.perf_counter() - started > args.budget:
                print(f"{label:26} {'on' if tf32 else 'off':>5}  skipped (time budget)")
                continue
            set_tf32(tf32)
            iso, perm = (nbody_error(model, device, nbody_batch) if task == "nbody"
                         else qm9_error(model, molecules, device))
            tolerance = TF32_TOLERANCE if tf32 else FLOAT32_TOLERANCE
            ok = iso < tolerance and perm < tolerance
            failed |= not ok and not tf32
            print(f"{label:26} {'on' if tf32 else 'off':>5} {iso:>10.2e} {perm:>12.2e}  {'ok' if ok else 'OVER'}",
                  flush=True)
    set_tf32(False)

    print(f"\n2. Training steps (forward + backward + Adam), {steps} timed steps after one warm-up")
    print(f"{'model':26} {'dtype':>6} {'ms/step':>9} {'finite':>7} {'bf16 vs f32':>12}")
    gen = torch.Generator().manual_seed(2)
    nbody_in = (torch.randn(nbody_batch, 5, 3, generator=gen).to(device),
                torch.randn(nbody_batch, 5, 3, generator=gen).to(device),
                (torch.randint(0, 2, (nbody_batch, 5), generator=gen).float() * 2 - 1).to(device))
    qm9_in = tuple(t.to(device) for t in molecules)
    runs = [("nbody SE3 dense", "nbody", dict(group="SE3")), ("nbody E3 dense", "nbody", dict(group="E3")),
            ("nbody E3 sparse (cutoff 2)", "nbody", dict(group="E3", cutoff=2.0)),
            ("qm9 SE3 dense", "qm9", dict(group="SE3")), ("qm9 SE3 sparse (5 A)", "qm9", dict(group="SE3", cutoff=5.0))]
    for label, task, config in runs:
        model = make(task, config)
        inputs = nbody_in if task == "nbody" else qm9_in

        def outputs(model=model, inputs=inputs):
            out = model(*inputs)
            return torch.cat([t.flatten() for t in out]) if isinstance(out, tuple) else out
        with torch.no_grad():
            reference = outputs().float()
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    low = outputs().float()
                difference = ((low - reference).norm() / reference.norm().clamp(min=1e-12)).item()
            except RuntimeError:  # reported by the bf16 step below
                difference = float("nan")
        for dtype_name in ("f32", "bf16"):
            if time.perf_counter() - started > args.budget:
                print(f"{label:26} {dtype_name:>6}  skipped (time budget)")
                continue
            try:
                r = time_steps(model, lambda: outputs().float().pow(2).mean(), device, dtype_name, steps)
            except RuntimeError as error:  # report and go on: one broken path must not hide the others
                failed = True
                print(f"{label:26} {dtype_name:>6}  ERROR {str(error).splitlines()[0][:120]}", flush=True)
                continue
            failed |= not r["finite"]
            extra = f"{difference:>12.2e}" if dtype_name == "bf16" else f"{'':>12}"
            print(f"{label:26} {dtype_name:>6} {r['ms']:>9.1f} {str(r['finite']):>7} {extra}", flush=True)
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.0f} s; {'FAILED' if failed else 'all float32 checks within tolerance, all steps finite'}")
    return 1 if failed or not math.isfinite(elapsed) else 0


if __name__ == "__main__":
    sys.exit(main())
