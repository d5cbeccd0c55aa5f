"""Training-step cost of the models: time and peak memory, SE(3) vs E(3), full vs sampled.

    .venv/bin/python benchmarks/models.py            # about 2 minutes on 2 CPU cores
    .venv/bin/python benchmarks/models.py --quick    # smaller sweep, for a smoke test

One training step = forward + backward + Adam update. Every configuration runs in a fresh
subprocess so that its peak memory can be read from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``:
the reported peak is that high-water mark after the first step minus the resident set size just
before it (read from ``/proc/self/statm``), i.e. the extra memory the step needed (activations,
gradients, optimizer state, allocator slack). Times are the median of the timed steps after
warm-up steps, with ``torch.set_num_threads(--threads)`` (default 2). On CUDA (``--device cuda``)
the peak is ``torch.cuda.max_memory_allocated`` instead.

Sections
--------
1. N-body (batch 128, 5 bodies) and QM9 (batch 128 real molecules from tests/data/qm9, padded to
   the largest), default sizes, SE(3) and E(3) side by side.
2. N-body step time against the number of vector channels T (4, 8, 16, 32): full invariants
   (C(T+1, 3) subdeterminants, C(T+1, 2) cross products per key/value map) against sampling a
   fixed k of each (paper "Scalability").
3. N-body step time against k at fixed T = 16: linear in k.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the package it measures: keep its own folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
QM9_SAMPLE = ROOT / "tests" / "data" / "qm9" / "qm9_sample_2000.xyz.tar.bz2"


# ----------------------------------------------------------------------------- worker side

def qm9_batch(batch_size: int, seed: int = 0):
    """``batch_size`` real QM9 molecules (Z, coordinates, RDKit bond types), padded, with a mask."""
    import random

    import torch
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    bond_type = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3,
                 Chem.BondType.AROMATIC: 4}
    with tarfile.open(QM9_SAMPLE) as archive:
        members = sorted((m for m in archive if m.isfile()), key=lambda m: m.name)
        chosen = random.Random(seed).sample(members, batch_size)
        texts = [archive.extractfile(m).read().decode() for m in chosen]
    molecules = []
    for text in texts:
        lines = text.splitlines()
        n = int(lines[0])
        atoms = [line.split() for line in lines[2:2 + n]]
        coords = [[float(c.replace("*^", "e")) for c in a[1:4]] for a in atoms]
        # Fixed-point coordinates: RDKit's XYZ reader rejects exponents such as 5.7e-05.
        block = f"{n}\n\n" + "\n".join(f"{a[0]} {x:.8f} {y:.8f} {z:.8f}" for a, (x, y, z) in zip(atoms, coords))
        mol = Chem.MolFromXYZBlock(block)
        bonds = torch.zeros(n, n, dtype=torch.long)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=0)
            for bond in mol.GetBonds():
                i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
                bonds[i, j] = bonds[j, i] = bond_type[bond.GetBondType()]
        except ValueError:  # bond perception fails for a few molecules: keep them unbonded
            pass
        numbers = [Chem.GetPeriodicTable().GetAtomicNumber(a[0]) for a in atoms]
        molecules.append((numbers, coords, bonds))
    n_max = max(len(m[0]) for m in molecules)
    z = torch.zeros(batch_size, n_max, dtype=torch.long)
    x = torch.zeros(batch_size, n_max, 3)
    b = torch.zeros(batch_size, n_max, n_max, dtype=torch.long)
    mask = torch.zeros(batch_size, n_max, dtype=torch.bool)
    for k, (numbers, coords, bonds) in enumerate(molecules):
        n = len(numbers)
        z[k, :n], x[k, :n], b[k, :n, :n], mask[k, :n] = torch.tensor(numbers), torch.tensor(coords), bonds, True
    return z, x, b, mask


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_worker(spec: dict) -> dict:
    """Build one model, time its training steps, measure the first step's peak memory."""
    import torch

    from invattn.models import build_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = build_model(spec["task"], **spec["model"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if spec["task"] == "nbody":
        gen = torch.Generator().manual_seed(0)
        b = spec["batch"]
        inputs = (torch.randn(b, 5, 3, generator=gen), torch.randn(b, 5, 3, generator=gen) * 0.5,
                  torch.randint(0, 2, (b, 5), generator=gen).float() * 2 - 1, None)
        inputs = tuple(t.to(device) if t is not None else None for t in inputs)

        def loss_fn():
            dx, dv = model(*inputs)
            return dx.pow(2).mean() + dv.pow(2).mean()
        extra = {}
    else:
        z, x, bonds, mask = (t.to(device) for t in qm9_batch(spec["batch"]))

        def loss_fn():
            return model(z, x, bonds, mask).pow(2).mean()
        extra = {"atoms_padded": int(mask.shape[1]), "atoms_mean": round(mask.sum(1).float().mean().item(), 1)}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = current_rss_mib()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    wall, cpu = time.perf_counter(), time.process_time()
    step()  # first step: allocator and optimizer-state warm-up; its peak memory is the one reported
    first = (time.perf_counter() - wall, time.process_time() - cpu)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    times = []
    budget_end = time.perf_counter() + spec["seconds"]
    # Cheap steps: at least 5 timed ones, so one step slowed by a busy machine cannot decide alone.
    min_steps = min(5, spec["steps"]) if first[0] < 0.5 and spec["seconds"] > 0 else 0
    while len(times) < spec["steps"] and (len(times) < min_steps or time.perf_counter() < budget_end):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    times = times or [first]  # a very slow configuration is timed on its first step
    walls, cpus = zip(*times)
    return {"params": sum(p.numel() for p in model.parameters()),
            "step_ms": 1000 * statistics.median(walls), "min_ms": 1000 * min(walls),
            "cpu_ms": 1000 * statistics.median(cpus), "steps": len(times),
            "peak_mib": peak, "peak_hidden_by_earlier_high_water": maxrss_before > rss_before + peak,
            **extra}


# ----------------------------------------------------------------------------- driver side

def measure(spec: dict) -> dict:
    """Run one configuration in a fresh interpreter (clean peak-memory reading)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"worker failed for {spec}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spec(task, model, args, *, batch=128, steps=20, seconds=3.0):
    """One configuration: after a first (untimed, memory-measuring) step, up to ``steps`` timed
    steps within ``seconds`` (at least 5 when a step is cheap; a configuration whose first step
    takes over half a second, or with ``seconds=0``, may be timed on that first step alone)."""
    return {"task": task, "model": model, "threads": args.threads, "device": args.device, "batch": batch,
            "steps": steps, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer configurations (smoke test)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    import torch

    peak = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "ru_maxrss after step 1 - RSS before"
    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}, peak = {peak}")
    print("times per training step (forward + backward + Adam): median and min wall clock, median process CPU")
    t0 = time.perf_counter()

    print("\n1. Training step at default sizes (batch 128)")
    print(f"{'task':6} {'group':5} {'params':>8} {'wall ms':>9} {'min ms':>8} {'cpu ms':>8} {'steps':>5} "
          f"{'peak MiB':>9}  input")
    results = {}
    for task in ("nbody", "qm9"):
        for group in ("SE3", "E3"):
            # QM9 on a CPU takes seconds per step: its first step is the timed one.
            s = spec(task, {"group": group}, args, **({} if task == "nbody" else {"seconds": 0.0}))
            r = results[(task, group)] = measure(s)
            notes = f"atoms padded to {r['atoms_padded']} (mean {r['atoms_mean']})" if task == "qm9" else "5 bodies"
            if r["peak_hidden_by_earlier_high_water"]:
                notes += "; peak is a lower bound"
            print(f"{task:6} {group:5} {r['params']:>8} {r['step_ms']:>9.1f} {r['min_ms']:>8.1f} {r['cpu_ms']:>8.1f} "
                  f"{r['steps']:>5} {r['peak_mib']:>9.1f}  {notes}", flush=True)
        se3, e3 = results[(task, "SE3")], results[(task, "E3")]
        print(f"{'':6} SE3/E3: params x{se3['params'] / e3['params']:.2f}, min time x{se3['min_ms'] / e3['min_ms']:.2f}, "
              f"memory x{se3['peak_mib'] / max(e3['peak_mib'], 1e-9):.2f}")

    k = 16
    ts = (4, 8, 16) if args.quick else (4, 8, 16, 32)
    print(f"\n2. N-body SE(3) step vs vector channels T: all invariants vs a fixed sample of k = {k}")
    print("   (k subdeterminants and k cross products per map; clipped to C(T+1, 3), C(T+1, 2) when smaller)")
    print(f"{'T':>3} {'C(T+1,3)':>8} {'C(T+1,2)':>8} {'full min ms':>11} {'full MiB':>9} {'k min ms':>9} "
          f"{'k MiB':>7} {'full/k time':>11}")
    for t in ts:
        n3, n2 = math.comb(t + 1, 3), math.comb(t + 1, 2)
        base = {"group": "SE3", "vectors": t}
        full = measure(spec("nbody", base, args, steps=10, seconds=1.5))
        sampled = measure(spec("nbody", {**base, "subdeterminants": min(k, n3), "cross_products": min(k, n2)},
                               args, steps=10, seconds=1.5))
        print(f"{t:>3} {n3:>8} {n2:>8} {full['min_ms']:>11.1f} {full['peak_mib']:>9.1f} {sampled['min_ms']:>9.1f} "
              f"{sampled['peak_mib']:>7.1f} {full['min_ms'] / sampled['min_ms']:>11.2f}", flush=True)

    t = 16
    ks = (8, 32, 128) if args.quick else (8, 16, 32, 64, 128)
    print(f"\n3. N-body SE(3) step vs k at T = {t}: k subdeterminants of C({t + 1},3) = {math.comb(t + 1, 3)} "
          f"and k cross products of C({t + 1},2) = {math.comb(t + 1, 2)} per map")
    print(f"{'k':>4} {'min ms':>8} {'cpu ms':>8} {'peak MiB':>9}")
    points = []
    for kk in ks:
        r = measure(spec("nbody", {"group": "SE3", "vectors": t, "subdeterminants": kk, "cross_products": kk},
                         args, steps=10, seconds=1.5))
        print(f"{kk:>4} {r['min_ms']:>8.1f} {r['cpu_ms']:>8.1f} {r['peak_mib']:>9.1f}", flush=True)
        points.append((kk, r["min_ms"], r["peak_mib"]))
    for label, column in (("min ms", 1), ("peak MiB", 2)):
        xs, ys = [p[0] for p in points], [p[column] for p in points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
        resid = sum((b - my - slope * (a - mx)) ** 2 for a, b in zip(xs, ys))
        r2 = 1 - resid / max(sum((b - my) ** 2 for b in ys), 1e-12)
        print(f"least-squares line, {label}: {my - slope * mx:.1f} + {slope:.3f} per k (R^2 = {r2:.3f})")
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
