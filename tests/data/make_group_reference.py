"""Writes tests/data/group_reference.pt: E3/SE3 outputs of small models before the group refactor.

Run once from the repository root with the code *before* models/groups.py existed (commit
fb898de): ``python tests/data/make_group_reference.py``. The file holds each model's config,
its state dict (float32 values, loaded into a float64 model) and its outputs on fixed seeded inputs; tests/test_groups_reference.py
loads the same weights into today's code and requires the same outputs to 1e-12. Small models
keep the file small; the paper-size parameter counts are asserted separately.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# At fb898de (pre-namespace) this line read `from models import NBodyModel, QM9Model`.
from invattn.models import NBodyModel, QM9Model  # noqa: E402

SMALL_NBODY = dict(n_layers=2, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8, mlp_hidden=16)
SMALL_QM9 = dict(n_layers=2, vectors=4, scalars=8, heads=2, query_vectors=4, query_scalars=8, mlp_hidden=16,
                 readout=8)


def nbody_inputs():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    q = torch.randn(2, 6, generator=g, dtype=torch.float64).sign()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    return x, v, q, mask


def qm9_inputs():
    g = torch.Generator().manual_seed(6)
    z = torch.tensor([[6, 1, 1, 8, 7], [6, 1, 9, 1, 1]])
    x = 1.5 * torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    bonds = torch.randint(0, 5, (2, 5, 5), generator=g)
    bonds = torch.maximum(bonds, bonds.transpose(1, 2))
    mask = torch.tensor([[True] * 5, [True] * 4 + [False]])
    return z, x, bonds, mask


def cases():
    """(name, model class, config) of every reference model."""
    out = []
    for group in ("SE3", "E3"):
        out.append((f"nbody_{group}", NBodyModel, dict(SMALL_NBODY, group=group)))
        out.append((f"nbody_{group}_sampled", NBodyModel,
                    dict(SMALL_NBODY, group=group, subdeterminants=3, cross_products=4, sampling_seed=2)))
        out.append((f"nbody_{group}_cutoff", NBodyModel, dict(SMALL_NBODY, group=group, cutoff=2.5)))
        out.append((f"qm9_{group}", QM9Model, dict(SMALL_QM9, group=group)))
    return out


def outputs(model, name):
    with torch.no_grad():
        if name.startswith("nbody"):
            dx, dv = model(*nbody_inputs())
            return torch.stack([dx, dv])
        return model(*qm9_inputs())


def main() -> None:
    reference = {}
    for seed, (name, cls, config) in enumerate(cases()):
        torch.manual_seed(100 + seed)
        model = cls(**config)  # float32 weights, stored as such (half the file), run in float64
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model = model.double()
        reference[name] = {"config": config, "state": state, "out": outputs(model, name)}
    path = Path(__file__).with_name("group_reference.pt")
    torch.save(reference, path)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(reference)} models)")


if __name__ == "__main__":
    main()
