"""``invattn demo``: the newcomer path, end to end on one machine.

1. Simulate the small demo dataset with our Numba simulator (skipped when present).
2. Run a small Ray Tune sweep (learning rate x subdeterminant sampling) on a local Ray
   instance with its dashboard, a few epochs per trial.
3. Print the results table and the best trial (ranked by validation position MSE on the last
   100 training simulations, ``configs/sweep/demo.yaml``), and compare its test MSE with the
   constant-velocity baseline's.

Extra ``key=value`` arguments are passed to the sweep (e.g. ``train.epochs=10``).
A second run shows the finished sweep again; ``make clean-demo`` starts over.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["demo_command"]


def demo_command(argv: list[str]) -> int:
    from invattn.guard import run_guarded

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    return run_guarded("demo", lambda: _demo(argv))


def _demo(argv: list[str]) -> int:
    from invattn.pipeline.config import load_config
    from invattn.simulator.cli import simulate_command
    from invattn.sweeps.cli import load_sweep_configs
    from invattn.sweeps.layout import SweepLayout
    from invattn.sweeps.runner import run_sweep

    sweep_cfg, train_cfg = load_sweep_configs(["preset=demo", *argv])
    data_dir = Path(train_cfg.data.dir)
    if not all((data_dir / f).is_file() for f in (train_cfg.data.train_file, train_cfg.data.test_file)):
        print(f"== 1/2 simulating the demo dataset into {data_dir}", flush=True)
        simulate_command(load_config("simulate", ["preset=demo", f"out={data_dir}"]))
    else:
        print(f"== 1/2 demo dataset present in {data_dir}", flush=True)
    exp = SweepLayout.of(sweep_cfg).experiment
    if exp.is_dir() and not sweep_cfg.resume:
        print(f"== 2/2 a demo sweep already ran ({exp}); showing it again "
              f"(`make clean-demo` starts over)", flush=True)
        sweep_cfg.resume = True
    else:
        print("== 2/2 running the demo sweep on a local Ray instance", flush=True)
    best = run_sweep(sweep_cfg, train_cfg)
    m = best["metrics"]
    mse, base = m.get("test_mse_x"), m.get("test_constant_velocity_mse_x")
    rank = str(sweep_cfg.metric)  # val_mse_x: chosen on held-out training simulations, not the test set
    print(json.dumps({"ranked_by": rank, f"best_{rank}": m.get(rank),
                      "best_test_mse_x": mse, "constant_velocity_mse_x": base,
                      "zero_change_mse_x": m.get("test_zero_change_mse_x")}, indent=2))
    if mse is not None and base is not None:
        verdict = "beats" if mse < base else "does NOT beat"
        print(f"The best trial (chosen by {sweep_cfg.metric}) {verdict} the constant-velocity baseline "
              f"on test position MSE ({mse:.4g} vs {base:.4g}).", flush=True)
        return 0 if mse < base else 1
    return 1
