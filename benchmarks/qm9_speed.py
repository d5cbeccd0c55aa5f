"""QM9 training throughput: the paper-size model (7 layers, 8 heads) against PyG's SchNet.

    .venv/bin/python benchmarks/qm9_speed.py            # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/qm9_speed.py --quick    # tiny batch, one round (smoke test)

Real QM9 molecules (tests/data/qm9 sample, bonds from RDKit), one training step = forward +
backward + Adam. Ours: ``QM9Model`` at its defaults (SE(3) and E(3)), dense all-pairs and sparse
with a 5 angstrom cutoff. Baseline: ``torch_geometric.nn.models.SchNet`` at its defaults
(128 features, 6 interactions, 50 Gaussians) with the same 5 angstrom cutoff; its radius graph
comes from ``models.graph.radius_graph`` (vesin), since PyG's own needs the compiled pyg-lib.
All models run in one process in interleaved rounds; each figure is the best round's
molecules per second (noisy on a shared machine: quote the ratios).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import _repo_path  # noqa: F401  (repository on sys.path)

CUTOFF = 5.0  # angstrom


def load_molecules(batch: int):
    """``batch`` real QM9 molecules, padded: ``(Z [B, N], positions [B, N, 3], bonds [B, N, N], mask)``."""
    # benchmarks/models.py reads the sample with RDKit bonds; load it under another module name.
    spec = importlib.util.spec_from_file_location("bench_models", _repo_path.HERE / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.qm9_batch(batch)


def schnet_graph(cutoff: float):
    """SchNet's ``interaction_graph``: radius graph without self-loops, and edge lengths."""
    from invattn.models.graph import radius_graph

    def graph(pos, batch):
        edge_index = radius_graph(pos, cutoff, batch)
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]
        return edge_index, (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
    return graph


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 molecules, one 1-layer SE3 model, one round")
    parser.add_argument("--layers", type=int, default=7, help="attention layers (paper: 7)")
    parser.add_argument("--batch", type=int, default=64, help="molecules per step (default 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    groups = ["SE3", "E3"]
    if args.quick:
        args.batch, args.rounds, args.steps, args.layers, groups = 2, 1, 1, 1, ["SE3"]

    import torch
    from torch_geometric.nn.models import SchNet

    from invattn.models import QM9Model

    torch.set_num_threads(args.threads)
    z, x, bonds, mask = load_molecules(args.batch)
    counts = mask.sum(1)
    batch = torch.repeat_interleave(torch.arange(args.batch), counts)
    runs = {}
    for group in groups:
        for cutoff in (None, CUTOFF):
            torch.manual_seed(0)
            model = QM9Model(group=group, n_layers=args.layers, cutoff=cutoff)
            runs[f"{group} {'dense' if cutoff is None else f'sparse {cutoff:g} A'}"] = (
                model, lambda m=model: m(z, x, bonds, mask))
    torch.manual_seed(0)
    schnet = SchNet(cutoff=CUTOFF, interaction_graph=schnet_graph(CUTOFF),
                    num_interactions=6 if args.layers == 7 else args.layers)
    z_flat, x_flat = z[mask], x[mask]
    runs["SchNet (PyG)"] = (schnet, lambda: schnet(z_flat, x_flat, batch).squeeze(-1))

    steps = {}
    for name, (model, forward) in runs.items():
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(forward=forward, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            forward().pow(2).mean().backward()
            optimizer.step()
        step()  # warm-up
        steps[name] = step

    print(f"torch {torch.__version__}, {args.threads} threads, {args.layers} attention layers; batch of {args.batch} real QM9 molecules "
          f"({counts.float().mean():.1f} atoms on average, padded to {mask.shape[1]}); forward + backward + Adam")
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name in runs:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    rate = {name: args.batch / best[name] for name in runs}
    base = rate["SchNet (PyG)"]
    print(f"{'model':18} {'params':>9} {'ms/step':>9} {'molecules/s':>12} {'vs SchNet':>10}")
    for name, (model, _) in runs.items():
        print(f"{name:18} {sum(p.numel() for p in model.parameters()):>9,} {1000 * best[name]:>9.1f} "
              f"{rate[name]:>12.1f} {rate[name] / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
