"""N-body training step: our E(3) and SE(3) attention models against EGNN, side by side.

    .venv/bin/python benchmarks/engine.py            # about 1 minute on 2 CPU cores
    .venv/bin/python benchmarks/engine.py --quick    # a few seconds (smoke test)
    .venv/bin/python benchmarks/engine.py --compile  # also torch.compile'd variants
    .venv/bin/python benchmarks/engine.py --default-malloc  # glibc's default heap thresholds

One step = forward + backward + Adam on a batch of 128 systems of 5 bodies (the paper's Table 1
setting), default model sizes (E3 116K, SE3 184K, EGNN 134K parameters). All models run in one
process; at each thread count the models are timed in interleaved rounds (E3, SE3, EGNN, E3, ...)
so that a busy machine slows all of them alike, and each model's figure is the minimum over its
rounds of the mean step time within a round. Like ``invattn train``, the process first raises glibc's
heap thresholds (``invattn.pipeline.training.malloc``) so per-step tensors do not page-fault;
``--default-malloc`` measures with the C library's defaults instead. Wall-clock and process CPU time are both reported:
on a shared machine the CPU time is the steadier of the two (it does not count time spent
waiting for a core). The ratios to EGNN are the figures to quote.
"""
from __future__ import annotations

import argparse
import sys
import time

import _repo_path  # noqa: F401  (repository on sys.path)


def build(name: str, compile_model: bool):
    import torch

    from invattn.models import NBodyModel
    from invattn.models.egnn import EGNN

    torch.manual_seed(0)
    model = EGNN() if name.startswith("EGNN") else NBodyModel(group=name.split("+")[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = torch.compile(model, dynamic=False) if compile_model else model
    return model, forward, optimizer


def make_step(forward, optimizer, inputs):
    def step():
        optimizer.zero_grad(set_to_none=True)
        dx, dv = forward(*inputs)
        (dx.pow(2).mean() + dv.pow(2).mean()).backward()
        optimizer.step()
    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one thread count, few rounds (smoke test)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per thread count")
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bodies", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd E3/SE3/EGNN")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default mmap/trim thresholds (invattn train raises them)")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        from invattn.pipeline.training.malloc import keep_freed_memory
        keep_freed_memory()
    if args.quick:
        args.threads, args.rounds, args.steps, args.batch = args.threads[:1], 2, 2, 16

    import torch

    gen = torch.Generator().manual_seed(0)
    b, n = args.batch, args.bodies
    inputs = (torch.randn(b, n, 3, generator=gen), torch.randn(b, n, 3, generator=gen) * 0.5,
              torch.randint(0, 2, (b, n), generator=gen).float() * 2 - 1)
    names = ["E3", "SE3", "EGNN"] + (["E3+compile", "SE3+compile", "EGNN+compile"] if args.compile else [])
    models, steps = {}, {}
    for name in names:
        model, forward, optimizer = build(name, name.endswith("compile"))
        models[name] = model
        steps[name] = make_step(forward, optimizer, inputs)
        start = time.perf_counter()
        for _ in range(2):  # warm-up (and compilation)
            steps[name]()
        if name.endswith("compile"):
            print(f"{name}: compiled and warmed up in {time.perf_counter() - start:.1f} s", flush=True)

    print(f"torch {torch.__version__}; batch {b} x {n} bodies; forward + backward + Adam; "
          f"{'default' if args.default_malloc else 'raised'} glibc heap thresholds; "
          f"min over {args.rounds} interleaved rounds of the mean of {args.steps} steps")
    header = f"{'threads':>7} " + " ".join(f"{name:>13}" for name in names)
    print(f"{'params':>7} " + " ".join(f"{sum(p.numel() for p in models[m].parameters()):>13,}" for m in names))
    print(header)
    ratios = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        wall = {name: float("inf") for name in names}
        cpu = dict(wall)
        for _ in range(args.rounds):
            for name in names:
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    steps[name]()
                wall[name] = min(wall[name], (time.perf_counter() - start) / args.steps * 1000)
                cpu[name] = min(cpu[name], (time.process_time() - start_cpu) / args.steps * 1000)
        print(f"{threads:>7} " + " ".join(f"{wall[m]:>10.1f} ms" for m in names) + "  (wall)")
        print(f"{'':>7} " + " ".join(f"{cpu[m]:>10.1f} ms" for m in names) + "  (process CPU)", flush=True)
        ratios.append((threads, wall, cpu))
    print("\nratios to EGNN, wall / CPU (target: E3 <= 1.0, SE3 <= 1.5)")
    for threads, wall, cpu in ratios:
        parts = []
        for m in names:
            base = "EGNN+compile" if m.endswith("compile") else "EGNN"
            if not m.startswith("EGNN"):
                parts.append(f"{m} {wall[m] / wall[base]:.2f}x / {cpu[m] / cpu[base]:.2f}x")
        print(f"  {threads} thread(s): " + ", ".join(parts) + ("  (compiled models vs compiled EGNN)"
                                                             if args.compile else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
