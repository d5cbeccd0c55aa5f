"""``invattn simulate`` and ``invattn simulate-merge`` (config ``configs/simulate.yaml``).

Examples::

    invattn simulate preset=paper out=data/nbody_paper          # train.h5 + test.h5
    invattn simulate preset=paper n_shards=8 shard_index=3      # one shard (e.g. a SLURM array task)
    invattn simulate-merge out=data/nbody_paper n_shards=8      # join the 8 shards per split
"""
from __future__ import annotations

import sys
import time

from invattn.checks import check_int
from invattn.simulator.generate import SimulationSettings, generate, merge

__all__ = ["simulate_command", "merge_command"]


def _log(message: str) -> None:
    print(f"invattn simulate: {message}", file=sys.stderr, flush=True)


def simulate_command(cfg) -> int:
    """Simulate the splits (or shards) the config selects; see :func:`simulator.generate.generate`.

    Raises ValueError (bad key or value, broken simulation) or FileExistsError (refusing to
    replace a file); ``invattn.cli`` prints them as one line with exit code 2.
    """
    settings = SimulationSettings.from_config(cfg)
    t0 = time.perf_counter()
    paths = generate(settings, log=_log)
    _log(f"done in {time.perf_counter() - t0:.2f} s: {len(paths)} file(s) ready in {settings.out}")
    if settings.n_shards > 1 and settings.shard_index is None:
        _log(f"all {settings.n_shards} shards complete; join them with "
             f"`invattn simulate-merge out={settings.out} n_shards={settings.n_shards}`")
    return 0


def merge_command(cfg) -> int:
    """Join shard files into ``<split>.h5``; uses the keys ``out``, ``n_shards``, ``overwrite``.

    The shards' own attributes (seed, sizes, physics) define the merged dataset, so the
    other keys are ignored.
    """
    if cfg.get("shard_index") is not None:
        raise ValueError("config key shard_index must be null for simulate-merge "
                         "(it merges all shards)")
    n_shards = check_int("config key n_shards", cfg.get("n_shards"))
    merge(cfg.out, n_shards, overwrite=bool(cfg.get("overwrite", False)),
          log=lambda m: print(f"invattn simulate-merge: {m}", file=sys.stderr, flush=True))
    return 0
