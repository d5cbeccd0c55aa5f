"""Numba N-body simulator vs. the NumPy implementation, side by side in one run.

    .venv/bin/python benchmarks/simulator.py            (or: make bench)
    .venv/bin/python benchmarks/simulator.py --quick    # 5 and 20 bodies, fewer simulations, demo preset

For 5, 20, 100 and 1000 bodies it times

* ``numba``: :func:`simulator.simulate` on all cores (parallel over simulations);
* ``numpy/traj``: the NumPy transcription of the NRI generator (``tests/nbody_reference.py``),
  one trajectory at a time and vectorized over bodies -- how the NRI script, and so the
  paper's dataset, produces trajectories;
* ``numpy/batch``: the same code vectorized over a batch of simulations too (the strongest
  NumPy baseline; it needs the whole batch's ``[S, N, N, D]`` temporaries in memory).

The NumPy columns run fewer simulations and are extrapolated per trajectory (printed as
``sims``).  Pair interactions count unordered pairs ``N (N - 1) / 2`` per step and
simulation.  Finally it times ``invattn simulate preset=paper`` (6000 simulations including
the HDF5 writes) in a fresh process, as a user would run it.

Targets (2-core machine): numba >= 300x numpy/traj for the paper preset, and the whole
paper dataset in < 10 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

REPO = Path(__file__).resolve().parent.parent
# This script is named simulator.py: drop its folder from the path so that `simulator` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from nbody_reference import reference_simulate  # noqa: E402
from invattn.simulator import initial_conditions, simulate  # noqa: E402

# bodies: (numba sims, numpy/traj sims, numpy/batch sims, n_steps, sample_freq)
CASES = {
    5: (6000, 3, 200, 5000, 100),     # the paper preset
    20: (1000, 2, 100, 1000, 100),
    100: (128, 1, 8, 300, 100),
    1000: (64, 1, 1, 20, 10),
}
# --quick: a smoke test of the same measurements in a few seconds (ratios are noisier).
QUICK_CASES = {
    5: (600, 1, 20, 5000, 100),
    20: (100, 1, 10, 1000, 100),
}


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_case(n_bodies: int, cases: dict = CASES) -> dict:
    sims, sims_traj, sims_batch, n_steps, sample_freq = cases[n_bodies]
    x, v, q = initial_conditions(0, "bench", 0, sims, n_bodies, 3)
    kw = dict(n_steps=n_steps, sample_freq=sample_freq, dt=1e-3, box_size=5.0)
    wall, cpu = _timed(lambda: simulate(x, v, q, **kw))

    def per_traj():
        for s in range(sims_traj):
            reference_simulate(x[s:s + 1], v[s:s + 1], q[s:s + 1], **kw)

    wall_traj, cpu_traj = _timed(per_traj)
    wall_batch, _ = _timed(lambda: reference_simulate(x[:sims_batch], v[:sims_batch], q[:sims_batch], **kw))
    pairs = n_bodies * (n_bodies - 1) // 2 * n_steps
    return dict(n_bodies=n_bodies, n_steps=n_steps, sims=sims, sims_traj=sims_traj,
                sims_batch=sims_batch, numba=sims / wall, numba_cores=cpu / wall,
                traj=sims_traj / wall_traj, batch=sims_batch / wall_batch,
                # CPU-seconds per trajectory: robust to other jobs sharing the machine
                cpu_ratio=(cpu_traj / sims_traj) / (cpu / sims),
                pairs=pairs * sims / wall, pairs_numpy=pairs * sims_batch / wall_batch)


def bench_paper_dataset(preset: str = "paper") -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(REPO / ".venv" / "bin" / "invattn"), "simulate", f"preset={preset}",
               f"out={tmp}/paper", "progress=false"]
        if not Path(cmd[0]).exists():
            cmd = [sys.executable, "-m", "invattn.cli", *cmd[1:]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"invattn simulate failed:\n{proc.stderr}")
        size = sum(p.stat().st_size for p in Path(tmp, "paper").iterdir()) / 2**20
    return wall, proc.stderr.strip() + f"\n  ({size:.0f} MiB written)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="5 and 20 bodies with fewer simulations, and the demo preset instead of "
                             "the paper one (a smoke test; the targets are not judged)")
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES
    preset, n_preset = ("demo", 1200) if args.quick else ("paper", 6000)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"numba {numba.__version__} with {numba.get_num_threads()} threads (parallel over "
          f"simulations), numpy {np.__version__} (single-threaded)")
    t0 = time.perf_counter()
    x, v, q = initial_conditions(0, "warmup", 0, 4, 5, 3)
    simulate(x, v, q, n_steps=200, sample_freq=100)
    print(f"numba kernel ready in {time.perf_counter() - t0:.2f} s (loaded from cache, or compiled once)\n")

    header = (f"{'bodies':>6} {'steps':>5} | {'numba traj/s':>12} {'(sims)':>6} | {'numpy/traj':>10} "
              f"{'(sims)':>6} {'speedup':>8} {'CPU-time':>8} | {'numpy/batch':>11} {'(sims)':>6} "
              f"{'speedup':>8} | {'numba pairs/s':>13} {'numpy pairs/s':>13}")
    print(header)
    print("-" * len(header))
    rows = []
    for n_bodies in cases:
        r = bench_case(n_bodies, cases)
        rows.append(r)
        print(f"{r['n_bodies']:>6} {r['n_steps']:>5} | {r['numba']:>12.1f} {r['sims']:>6} | "
              f"{r['traj']:>10.2f} {r['sims_traj']:>6} {r['numba'] / r['traj']:>7.0f}x "
              f"{r['cpu_ratio']:>7.0f}x | {r['batch']:>11.2f} {r['sims_batch']:>6} "
              f"{r['numba'] / r['batch']:>7.1f}x | {r['pairs']:>13.3g} {r['pairs_numpy']:>13.3g}",
              flush=True)
    paper = rows[0]
    print(f"\ntraj/s and speedups are wall clock; 'CPU-time' compares CPU-seconds per trajectory "
          f"(numba on all threads vs. numpy on one; robust to other jobs on the machine).\n"
          f"NumPy columns are extrapolated per trajectory from the (sims) they ran.  Pairs: "
          f"N(N-1)/2 per step and simulation.  Numba used {paper['numba_cores']:.2f} cores "
          f"on average in the paper row.")

    wall, log = bench_paper_dataset(preset)
    numpy_paper = n_preset / paper["traj"]
    print(f"\n`invattn simulate preset={preset}` ({n_preset} sims x 49 frames, HDF5 writes, fresh process): "
          f"{wall:.2f} s wall")
    print("  " + log.replace("\n", "\n  "))
    print(f"  the NumPy generator (numpy/traj) would need ~{numpy_paper:.0f} s for the simulations "
          f"alone: {numpy_paper / wall:.0f}x slower end to end")

    speedup = paper["numba"] / paper["traj"]
    if args.quick:
        print(f"\n--quick: 5-body (paper physics) speedup vs numpy/traj {speedup:.0f}x; targets are judged "
              f"by the full run only")
        return
    print(f"\ntargets: paper preset speedup vs numpy/traj {speedup:.0f}x (target >= 300x): "
          f"{'MET' if speedup >= 300 else 'MISSED'}; paper dataset {wall:.2f} s (target < 10 s): "
          f"{'MET' if wall < 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
