"""N-body training step against system size: dense all-pairs attention vs the sparse cutoff path.

    .venv/bin/python benchmarks/scaling.py            # N = 5, 100, 1000, 4000 (a few minutes)
    .venv/bin/python benchmarks/scaling.py --quick    # N = 5, 20, 40 (smoke test)

One system of N bodies per step (forward + backward + Adam, default E(3) or --group SE3 model).
Bodies are uniform in a cube sized so that each has about ``--neighbours`` others within the
cutoff (default 30 within 2 length units); the sparse path attends over that radius graph (found
inside the model's forward, so its cost is included), the dense path over all N^2 pairs. Dense
runs only up to ``--dense-max`` bodies (its memory grows as N^2); above that the table shows the
dense memory extrapolated from the largest dense run (per-pair cost times N^2).

Every configuration runs in a fresh subprocess, so its peak memory can be read from
``ru_maxrss`` (high-water mark after the first step minus the resident set before it: the
activations, gradients, optimizer state and allocator slack of one step). Times are the minimum
over the timed steps (CPU; noisy on a shared machine). The last lines fit ``time ~ N^p`` to the
sparse runs: ``p`` close to 1 is linear scaling.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import _repo_path  # noqa: F401  (repository on sys.path)

CUTOFF = 2.0


def box_side(n: int, neighbours: float, cutoff: float) -> float:
    """Cube side giving ``neighbours`` expected bodies within ``cutoff`` of one (uniform density)."""
    return (n * (4.0 / 3.0) * math.pi * cutoff ** 3 / max(neighbours, 1e-9)) ** (1.0 / 3.0)


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_worker(spec: dict) -> dict:
    import torch

    from invattn.models import NBodyModel
    from invattn.models.graph import radius_graph_dense

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    n = spec["n"]
    gen = torch.Generator().manual_seed(0)
    side = box_side(n, spec["neighbours"], CUTOFF)
    x = torch.rand(1, n, 3, generator=gen) * side
    v = torch.randn(1, n, 3, generator=gen) * 0.5
    q = torch.randint(0, 2, (1, n), generator=gen).float() * 2 - 1
    mask = torch.ones(1, n, dtype=torch.bool)
    edges = radius_graph_dense(x, mask, CUTOFF)[0].shape[1] if spec["sparse"] else n * n
    model = NBodyModel(group=spec["group"], cutoff=CUTOFF if spec["sparse"] else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        dx, dv = model(x, v, q)
        (dx.pow(2).mean() + dv.pow(2).mean()).backward()
        optimizer.step()

    rss_before = current_rss_mib()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    times = []
    for _ in range(spec["steps"] if first < spec["slow"] else 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"edges": edges, "step_ms": 1000 * min(times), "peak_mib": peak}


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                         text=True, cwd=_repo_path.REPO)
    if out.returncode:
        raise RuntimeError(f"worker failed for {spec}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 5, 20, 40, one timed step (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 100, 1000, 4000], help="numbers of bodies")
    parser.add_argument("--neighbours", type=float, default=30.0, help="expected neighbours within the cutoff")
    parser.add_argument("--dense-max", type=int, default=300, help="largest N run dense (default 300)")
    parser.add_argument("--group", default="E3", choices=["E3", "SE3"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.sizes, args.steps = [5, 20, 40], 1

    print(f"N-body {args.group}, one system per step, cutoff {CUTOFF} (switched), ~{args.neighbours:g} "
          f"neighbours per body, {args.threads} threads; min step time, peak = ru_maxrss after step 1 - RSS before")
    print(f"{'N':>6} {'path':6} {'edges':>9} {'edges/N':>8} {'step ms':>9} {'ms/body':>8} {'peak MiB':>9} "
          f"{'KiB/edge':>8}")
    sparse_points, per_pair = [], None
    for n in args.sizes:
        for sparse in (False, True):
            if not sparse and n > args.dense_max:
                if per_pair is not None:
                    print(f"{n:>6} {'dense':6} {n * n:>9} {n:>8} {'-':>9} {'-':>8} "
                          f"{per_pair * n * n:>9.0f}  (not run: extrapolated from N={dense_n})")
                continue
            spec = {"n": n, "sparse": sparse, "group": args.group, "threads": args.threads,
                    "neighbours": args.neighbours, "steps": args.steps, "slow": 20.0}
            r = measure(spec)
            e = r["edges"]
            print(f"{n:>6} {'sparse' if sparse else 'dense':6} {e:>9} {e / n:>8.1f} {r['step_ms']:>9.1f} "
                  f"{r['step_ms'] / n:>8.3f} {r['peak_mib']:>9.1f} {1024 * r['peak_mib'] / e:>8.2f}", flush=True)
            if sparse:
                sparse_points.append((n, r["step_ms"], r["peak_mib"]))
            elif n >= 20:
                per_pair, dense_n = r["peak_mib"] / (n * n), n
    big = [p for p in sparse_points if p[0] >= 20]
    if len(big) >= 2:
        for label, column in (("time", 1), ("peak memory", 2)):
            (n0, *a), (n1, *b) = big[0], big[-1]
            y0, y1 = max(a[column - 1], 1e-9), max(b[column - 1], 1e-9)
            print(f"sparse {label} ~ N^{math.log(y1 / y0) / math.log(n1 / n0):.2f} between N={n0} and N={n1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
