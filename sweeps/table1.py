"""``invattn reproduce-table1``: the paper's N-body Table 1, end to end.

1. Simulate the paper dataset (5000 train / 1000 test, 5 bodies, 49 frames) if missing.
2. Learning-rate sweep per variant (``configs/sweep/table1_lr.yaml``): short runs over
   ``lr_grid``; each variant keeps the rate with the lowest test MSE of positions (the paper
   "sweep[s] over different learning rates and select[s] the one with the best performance").
3. Final runs (``configs/sweep/table1_final.yaml``): both variants, every seed, ``epochs`` epochs.
4. Write ``nbody_table1.json`` (per variant: mean and standard deviation over seeds of the final
   ``mse_x`` and ``mse_v``, parameters, epochs, seconds per epoch, seeds, learning rate, machine,
   command), the learning curves ``nbody_table1_curves.png`` and the table ``table1.md`` into
   ``output_dir`` (default ``results_dir/table1``).  Only ``publish=true`` also writes the
   tracked files in ``docs/`` (``publish_json``, ``publish_plot``, ``publish_markdown``): a trial
   run (fewer epochs, another dataset) never replaces the published numbers by accident.

Both sweeps are ordinary Ray Tune sweeps: an interrupted reproduction resumes where it stopped
when run again, and ``ray_address`` runs it on a cluster (e.g. inside ``slurm/sweep.sh``).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = ["reproduce_command", "collect_runs", "summarize", "plot_curves", "output_paths"]


def _sweep(argv: list[str]):
    from ray import tune

    from sweeps.cli import load_sweep_configs
    from sweeps.runner import run_sweep

    sweep_cfg, train_cfg = load_sweep_configs(argv)
    exp = Path(sweep_cfg.results_dir).resolve() / sweep_cfg.name / "ray" / sweep_cfg.name
    if tune.Tuner.can_restore(str(exp)):
        sweep_cfg.resume = True  # finished trials are kept; unfinished ones continue
    run_sweep(sweep_cfg, train_cfg)
    return Path(sweep_cfg.results_dir).resolve() / sweep_cfg.name


def collect_runs(sweep_dir: Path) -> list[dict]:
    """Every trial of a finished sweep: its params and its per-epoch metrics records."""
    from ray.tune import ExperimentAnalysis

    from pipeline.training.metrics_log import MetricsLog

    runs = []
    sweep_dir = Path(sweep_dir).resolve()
    for trial in ExperimentAnalysis(str(sweep_dir / "ray" / sweep_dir.name)).trials:
        params = dict(trial.config or {})
        lr = params.get("lr", (params.get("lr_by_group") or {}).get(params.get("group")))
        records = MetricsLog.read(Path(trial.path) / "run" / "metrics.jsonl")
        runs.append({"group": params.get("group"), "lr": lr, "seed": params.get("seed", 0),
                     "status": str(trial.status), "records": records})
    return runs


def best_lr_per_group(runs: list[dict], metric: str = "test_mse_x") -> dict[str, float]:
    best: dict[str, tuple[float, float]] = {}
    for run in runs:
        if not run["records"] or metric not in run["records"][-1]:
            continue
        value = run["records"][-1][metric]
        if run["group"] not in best or value < best[run["group"]][0]:
            best[run["group"]] = (value, run["lr"])
    return {g: lr for g, (_, lr) in best.items()}


def summarize(runs: list[dict], *, command: str, epochs: int) -> dict:
    """The published record, per variant: mean/std over the seeds that finished ``epochs``.

    Runs that stopped earlier (an interrupted reproduction) are listed under ``partial_runs``
    with the epoch they reached, and left out of the means.
    """
    import torch

    out: dict = {}
    for group in sorted({r["group"] for r in runs if r["records"]}):
        mine = sorted((r for r in runs if r["group"] == group and r["records"]), key=lambda r: r["seed"])
        done = [r for r in mine if r["records"][-1]["epoch"] >= epochs]
        partial = [r for r in mine if r["records"][-1]["epoch"] < epochs]
        finals = [r["records"][-1] for r in done]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else None  # noqa: E731
        mean = lambda xs: statistics.mean(xs) if xs else None  # noqa: E731
        mse_x, mse_v = [f["test_mse_x"] for f in finals], [f["test_mse_v"] for f in finals]
        sec = [rec["seconds_per_epoch"] for r in mine for rec in r["records"]]
        last = mine[0]["records"][-1]
        out[group] = {
            "mse_x": mean(mse_x), "mse_x_std": sd(mse_x), "mse_x_per_seed": mse_x,
            "mse_v": mean(mse_v), "mse_v_std": sd(mse_v), "mse_v_per_seed": mse_v,
            "params": last["params"], "epochs": epochs,
            "seconds_per_epoch": mean(sec), "seconds_per_epoch_median": statistics.median(sec),
            "seeds": [r["seed"] for r in done], "lr": mine[0]["lr"],
            "partial_runs": [{"seed": r["seed"], "epoch_reached": r["records"][-1]["epoch"],
                              "mse_x": r["records"][-1].get("test_mse_x"),
                              "mse_v": r["records"][-1].get("test_mse_v")} for r in partial],
            "baselines": {k: last[f"test_{k}"] for k in
                          ("zero_change_mse_x", "zero_change_mse_v", "constant_velocity_mse_x")},
        }
    out["machine"] = {"platform": platform.platform(), "processor": platform.machine(),
                      "cpus": os.cpu_count(), "torch": torch.__version__,
                      "device": "cuda" if torch.cuda.is_available() else "cpu"}
    out["command"] = command
    return out


PAPER_ROWS = [  # Table 1 of the paper: MSE x (1e-4), MSE v (1e-3), time per epoch (s, A5000), size
    ("SE(3)-Transformer [16]", "35.8 ± 6.1", "60.1 ± 1.5", "33.3", "163K"),
    ("EGNN [32]", "31.6 ± 1.0", "-", "5.3", "134K"),
    ("Ours-SE(3) (paper)", "34.9 ± 1.8", "58.2 ± 3.0", "9.9", "184K"),
    ("Ours-E(3) (paper)", "31.2 ± 1.2", "54.4 ± 1.0", "5.9", "115K"),
]


def markdown_table(record: dict) -> str:
    """Table 1 with the paper's rows and ours (mean ± std over the finished seeds)."""
    def fmt(mean, std, scale):
        if mean is None:
            return "-"
        return f"{mean * scale:.1f}" + (f" ± {std * scale:.1f}" if std is not None else "")

    lines = ["| model | MSE x (1e-4) | MSE v (1e-3) | s / epoch | params | seeds (epochs) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {x} | {v} | {t} (A5000) | {size} | 5 (500) |" for name, x, v, t, size in PAPER_ROWS]
    for group, label in (("SE3", "SE(3)"), ("E3", "E(3)")):
        r = record.get(group)
        if not r:
            continue
        seeds = f"{', '.join(str(s) for s in r['seeds'])} ({r['epochs']})"
        for p in r["partial_runs"]:
            seeds += f"; seed {p['seed']} stopped at {p['epoch_reached']}"
        lines.append(f"| **this repo, {label}** (lr {r['lr']:g}) | {fmt(r['mse_x'], r['mse_x_std'], 1e4)} | "
                     f"{fmt(r['mse_v'], r['mse_v_std'], 1e3)} | {r['seconds_per_epoch_median']:.1f} "
                     f"(1 CPU thread) | {r['params'] / 1000:.0f}K | {seeds} |")
    b = next(record[g]["baselines"] for g in ("E3", "SE3") if g in record)
    lines.append(f"| zero change / constant velocity (our test set) | {b['zero_change_mse_x'] * 1e4:.1f} / "
                 f"{b['constant_velocity_mse_x'] * 1e4:.1f} | {b['zero_change_mse_v'] * 1e3:.1f} / "
                 f"{b['zero_change_mse_v'] * 1e3:.1f} | - | - | - |")
    return "\n".join(lines)


def update_markdown(path: Path, record: dict) -> None:
    """Rewrite the generated table between the markers of ``path`` (the prose is kept)."""
    begin, end = "<!-- table1:begin (generated by invattn reproduce-table1) -->", "<!-- table1:end -->"
    text = path.read_text() if path.is_file() else f"{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise ValueError(f"{path} lacks the markers {begin!r} ... {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{markdown_table(record)}\n{end}{tail}")


def plot_curves(runs: list[dict], path: Path) -> None:
    """Test MSE of positions and velocities per epoch, one line per variant and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in sorted(runs, key=lambda r: (r["group"], r["seed"])):
        recs = [r for r in run["records"] if "test_mse_x" in r]
        if not recs:
            continue
        epochs = [r["epoch"] for r in recs]
        label = f"{run['group']} seed {run['seed']} (lr {run['lr']:.0e})"
        axes[0].plot(epochs, [r["test_mse_x"] for r in recs], label=label)
        axes[1].plot(epochs, [r["test_mse_v"] for r in recs], label=label)
    paper = {"E3": (31.2e-4, 54.4e-3), "SE3": (34.9e-4, 58.2e-3)}
    for i, (ax, name) in enumerate(zip(axes, ("MSE x (positions)", "MSE v (velocities)"))):
        for group, style in (("E3", ":"), ("SE3", "--")):
            ax.axhline(paper[group][i], color="gray", ls=style, lw=1, label=f"paper {group}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {name}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("N-body (5 charged bodies, 500-step horizon): test error during training")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce_command(cfg: DictConfig) -> int:
    from pipeline.config import load_config
    from simulator.cli import simulate_command

    output_paths(cfg)  # bad keys fail before any work
    if cfg.publish_only:
        return _publish(cfg, Path(cfg.results_dir).resolve() / "table1_final")
    data = Path(cfg.data_dir)
    if not (data / "train.h5").is_file() or not (data / "test.h5").is_file():
        print(f"== simulating the paper dataset into {data}", flush=True)
        simulate_command(load_config("simulate", ["preset=paper", f"out={data}"]))
    common = [f"results_dir={cfg.results_dir}", f"data.dir={data}",
              f"resources.cpus_per_trial={cfg.cpus_per_trial}"]
    if cfg.ray_address:
        common.append(f"ray.address={cfg.ray_address}")
    lr_by_group = OmegaConf.to_container(cfg.lr_by_group) if cfg.lr_by_group else None
    if not lr_by_group:
        print("== step 1: learning-rate sweep", flush=True)
        lr_grid = ",".join(str(float(x)) for x in cfg.lr_grid)
        lr_dir = _sweep(["preset=table1_lr", *common, f"search.lr=[{lr_grid}]",
                         f"train.epochs={cfg.lr_epochs}"])
        lr_by_group = best_lr_per_group(collect_runs(lr_dir))
        print(f"chosen learning rates: {lr_by_group}", flush=True)
    rates = ", ".join(f"{g}: {lr}" for g, lr in lr_by_group.items())
    seeds = ",".join(str(int(s)) for s in cfg.seeds)
    print("== step 2: final runs", flush=True)
    final_dir = _sweep(["preset=table1_final", *common, f"search.lr_by_group={{{rates}}}",
                        f"search.seeds=[{seeds}]", f"train.epochs={cfg.epochs}"])
    return _publish(cfg, final_dir)


def output_paths(cfg: DictConfig) -> list[tuple[Path, Path, Path]]:
    """``(json, plot, markdown)`` targets: this run's folder, then ``docs/`` when ``publish``."""
    out = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.results_dir) / "table1"
    targets = [(out / "nbody_table1.json", out / "nbody_table1_curves.png", out / "table1.md")]
    if not isinstance(cfg.publish, bool):
        raise ValueError(f"config key publish must be true or false, got {cfg.publish!r}")
    if cfg.publish:
        targets.append((Path(cfg.publish_json), Path(cfg.publish_plot), Path(cfg.publish_markdown)))
    return targets


def _publish(cfg: DictConfig, final_dir: Path) -> int:
    """Write the JSON record, the plot and the table from the final sweep's runs, finished or not."""
    targets = output_paths(cfg)  # bad keys fail before any work
    if not (final_dir / "ray").is_dir():
        raise FileNotFoundError(f"no final runs to publish in {final_dir}")
    runs = collect_runs(final_dir)
    # The command that produced the runs (publish_only=true only reports on them).
    saved = final_dir / "command.txt"
    command = saved.read_text().strip() if cfg.publish_only and saved.is_file() else (
        "invattn reproduce-table1 " + " ".join(shlex.quote(a) for a in sys.argv[2:])).strip()
    if not cfg.publish_only:
        saved.write_text(command + "\n")
    record = summarize(runs, command=command, epochs=int(cfg.epochs))
    for out, plot, markdown in targets:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(out)
        plot_curves(runs, plot)
        update_markdown(markdown, record)
    print(json.dumps({g: {k: record[g][k] for k in ("mse_x", "mse_v", "lr", "epochs")}
                      for g in record if g in ("E3", "SE3")}, indent=2))
    for out, plot, markdown in targets:
        print(f"wrote {out}, {plot} and {markdown}", flush=True)
    if not cfg.publish:
        print(f"(docs/ is unchanged; publish these numbers with `invattn reproduce-table1 "
              f"publish_only=true publish=true` and the same settings)", flush=True)
    return 0

