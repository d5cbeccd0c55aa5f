"""``invattn reproduce-table1`` and ``invattn reproduce-nbody-egnn``: N-body benchmarks end to end.

Both run the same steps (``benchmark`` in the config picks the reference rows, the table and the
plot); ``configs/reproduce_table1.yaml`` is the paper's Table 1, ``reproduce_nbody_egnn.yaml``
the EGNN paper's N-body protocol (3000 training simulations, frame 30 -> 40, MSE of positions).

1. Simulate the dataset (``simulate_preset``) into ``data_dir`` if missing.
2. Learning-rate sweep (``lr_preset``): short runs over ``lr_grid`` for every model in
   ``groups`` (``E3``, ``SE3``, and ``EGNN``, the same-protocol baseline), with the last
   ``val_sims`` TRAINING simulations held out as a validation split; each model keeps the rate
   with the lowest validation MSE of positions at the last epoch. The test set plays no part.
3. Final runs (``final_preset``): every model, every seed, ``epochs`` epochs, with
   ``final_val_sims`` training simulations held out (0: train on all of them, as the paper).
4. Write the JSON record (per model: mean and standard deviation over seeds of the final test
   ``mse_x`` / ``mse_v``, and with a validation split the test MSE at the best validation epoch;
   parameters, seconds per epoch, seeds, learning rate; machine, command; and every run of both
   steps with its learning curve), the learning-curve plot (drawn from that record: all models in
   one figure) and the markdown table into ``output_dir`` (default ``results_dir/<benchmark>``).
   Only ``publish=true`` also writes the tracked files in ``docs/`` (``publish_json``,
   ``publish_plot``, ``publish_markdown``): a trial run never replaces published numbers.

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

from invattn.checks import check_bool, check_int
from invattn.files import write_atomic
from invattn.sweeps.layout import SweepLayout

__all__ = ["reproduce_command", "collect_runs", "summarize", "plot_curves", "output_paths",
           "best_lr_per_group", "markdown_table", "update_markdown", "BENCHMARKS"]


def _sweep(argv: list[str]):
    from invattn.sweeps.cli import load_sweep_configs
    from invattn.sweeps.runner import run_sweep

    sweep_cfg, train_cfg = load_sweep_configs(argv)
    layout = SweepLayout.of(sweep_cfg)
    if layout.can_resume():
        sweep_cfg.resume = True  # finished trials are kept; unfinished ones continue
    run_sweep(sweep_cfg, train_cfg)
    return layout.results


def collect_runs(sweep_dir: Path) -> list[dict]:
    """Every trial of a finished sweep: its params and its per-epoch metrics records."""
    from ray.tune import ExperimentAnalysis

    from invattn.pipeline.training.metrics_log import MetricsLog

    runs = []
    for trial in ExperimentAnalysis(str(SweepLayout.of_results(sweep_dir).experiment)).trials:
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


# Per-epoch values kept for every run in the JSON record (its learning curve).
CURVE_KEYS = ("epoch", "train_loss", "test_mse_x", "test_mse_v", "val_mse_x", "val_mse_v",
              "seconds_per_epoch")


def _curve(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in CURVE_KEYS if k in r} for r in records]


def _best_val(records: list[dict]) -> dict | None:
    """The evaluated epoch with the lowest validation MSE x (early stopping), or None."""
    scored = [r for r in records if "val_mse_x" in r and "test_mse_x" in r]
    return min(scored, key=lambda r: r["val_mse_x"]) if scored else None


def summarize(runs: list[dict], *, command: str, epochs: int, lr_runs: list[dict] | None = None,
              protocol: dict | None = None) -> dict:
    """The published record, per model: mean/std over the seeds that finished ``epochs``.

    Runs that stopped earlier (an interrupted reproduction) are listed under ``partial_runs``
    with the epoch they reached, and left out of the means. With a validation split, ``mse_x_best_val``
    is the test MSE x at each run's epoch of lowest validation MSE x (mean over seeds). ``runs``
    and ``lr_runs`` keep every run of the final and the learning-rate step with its curve.
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
        best = [_best_val(r["records"]) for r in done]
        if best and all(best):
            at_best = [b["test_mse_x"] for b in best]
            out[group].update({"mse_x_best_val": mean(at_best), "mse_x_best_val_std": sd(at_best),
                               "mse_x_best_val_per_seed": at_best,
                               "best_val_epoch_per_seed": [b["epoch"] for b in best]})
    out["machine"] = {"platform": platform.platform(), "processor": platform.machine(),
                      "cpus": os.cpu_count(), "torch": torch.__version__,
                      "device": "cuda" if torch.cuda.is_available() else "cpu"}
    out["command"] = command
    if protocol is not None:
        out["protocol"] = protocol
    def keep(rs):  # every run with its learning curve, in a stable order
        rs = sorted(rs, key=lambda r: (str(r["group"]), r["seed"], r["lr"] or 0))
        return [{"group": r["group"], "seed": r["seed"], "lr": r["lr"], "status": r["status"],
                 "curve": _curve(r["records"])} for r in rs]

    out["runs"] = keep(runs)
    out["lr_runs"] = keep(lr_runs or [])
    return out


MODELS = ("E3", "SE3", "EGNN")  # record keys per model, in table order
LABELS = {"E3": "E(3)", "SE3": "SE(3)", "EGNN": "EGNN (same data and protocol)"}

PAPER_ROWS = [  # Table 1 of the paper: MSE x (1e-4), MSE v (1e-3), time per epoch (s, A5000), size
    ("SE(3)-Transformer [16]", "35.8 ± 6.1", "60.1 ± 1.5", "33.3", "163K"),
    ("EGNN [32]", "31.6 ± 1.0", "-", "5.3", "134K"),
    ("Ours-SE(3) (paper)", "34.9 ± 1.8", "58.2 ± 3.0", "9.9", "184K"),
    ("Ours-E(3) (paper)", "31.2 ± 1.2", "54.4 ± 1.0", "5.9", "115K"),
]
# Published test MSE of positions on the EGNN paper's N-body protocol (as quoted in issue 15).
PUBLISHED_EGNN_PROTOCOL = [("EGNN (Satorras et al. 2021)", 0.0071),
                           ("SEGNN (Brandstetter et al. 2022)", 0.0043),
                           ("CGENN (Ruhe et al. 2023)", 0.0039), ("MVN-GNN", 0.0035)]


def _fmt(mean, std, scale, digits=1):
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _seeds(r: dict) -> str:
    seeds = f"{', '.join(str(s) for s in r['seeds'])} ({r['epochs']})"
    for p in r["partial_runs"]:
        seeds += f"; seed {p['seed']} stopped at {p['epoch_reached']}"
    return seeds


def markdown_table(record: dict, benchmark: str = "table1") -> str:
    """The benchmark's table: published rows, then ours (mean ± std over the finished seeds)."""
    if benchmark == "egnn_protocol":
        return _egnn_protocol_table(record)
    lines = ["| model | MSE x (1e-4) | MSE v (1e-3) | s / epoch | params | seeds (epochs) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {x} | {v} | {t} (A5000) | {size} | 5 (500) |" for name, x, v, t, size in PAPER_ROWS]
    for group in ("SE3", "E3", "EGNN"):
        r = record.get(group)
        if not r:
            continue
        lines.append(f"| **this repo, {LABELS[group]}** (lr {r['lr']:g}) | {_fmt(r['mse_x'], r['mse_x_std'], 1e4)} | "
                     f"{_fmt(r['mse_v'], r['mse_v_std'], 1e3)} | {r['seconds_per_epoch_median']:.1f} "
                     f"(1 CPU thread) | {r['params'] / 1000:.0f}K | {_seeds(r)} |")
    b = next(record[g]["baselines"] for g in MODELS if g in record)
    lines.append(f"| zero change / constant velocity (our test set) | {b['zero_change_mse_x'] * 1e4:.1f} / "
                 f"{b['constant_velocity_mse_x'] * 1e4:.1f} | {b['zero_change_mse_v'] * 1e3:.1f} / "
                 f"{b['zero_change_mse_v'] * 1e3:.1f} | - | - | - |")
    return "\n".join(lines)


def _egnn_protocol_table(record: dict) -> str:
    lines = ["| model | test MSE x (best validation epoch) | test MSE x (last epoch) | params | seeds (epochs) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} (published) | {value:.4f} | - | - | - |" for name, value in PUBLISHED_EGNN_PROTOCOL]
    for group in MODELS:
        r = record.get(group)
        if not r:
            continue
        lines.append(f"| **this repo, {LABELS[group]}** (lr {r['lr']:g}) | "
                     f"{_fmt(r.get('mse_x_best_val'), r.get('mse_x_best_val_std'), 1, 4)} | "
                     f"{_fmt(r['mse_x'], r['mse_x_std'], 1, 4)} | {r['params'] / 1000:.0f}K | {_seeds(r)} |")
    b = next(record[g]["baselines"] for g in MODELS if g in record)
    lines.append(f"| zero change / constant velocity (our test set) | {b['zero_change_mse_x']:.4f} / "
                 f"{b['constant_velocity_mse_x']:.4f} | - | - | - |")
    return "\n".join(lines)


MARKERS = {"table1": ("<!-- table1:begin (generated by invattn reproduce-table1) -->", "<!-- table1:end -->"),
           "egnn_protocol": ("<!-- nbody_egnn:begin (generated by invattn reproduce-nbody-egnn) -->",
                             "<!-- nbody_egnn:end -->")}


def update_markdown(path: Path, record: dict, benchmark: str = "table1") -> None:
    """Rewrite the generated table between the markers of ``path`` (the prose is kept)."""
    begin, end = MARKERS[benchmark]
    text = path.read_text() if path.is_file() else f"{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise ValueError(f"{path} lacks the markers {begin!r} ... {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_atomic(path, f"{head}{begin}\n{markdown_table(record, benchmark)}\n{end}{tail}")


# Horizontal reference lines of each benchmark's plot: (label, panel, value).
REFERENCES = {
    "table1": [("paper E(3)", 0, 31.2e-4), ("paper SE(3)", 0, 34.9e-4), ("paper EGNN", 0, 31.6e-4),
               ("paper E(3)", 1, 54.4e-3), ("paper SE(3)", 1, 58.2e-3)],
    "egnn_protocol": [(f"{name.split(' (')[0]} (published)", 0, v) for name, v in PUBLISHED_EGNN_PROTOCOL],
}
TITLES = {"table1": "N-body (5 charged bodies, 500-step horizon): test error during training",
          "egnn_protocol": "N-body, EGNN protocol (frame 30 -> 40, 1000 steps): error during training"}


def plot_curves(record: dict, path: Path, benchmark: str = "table1") -> None:
    """Learning curves of every model in one figure, drawn from a JSON record's ``runs``.

    Left: test MSE of positions per epoch (and, dashed, the validation MSE when the runs held
    one out); right: test MSE of velocities. One colour per model, one line per seed; grey
    horizontal lines are the published numbers of the benchmark.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"E3": "tab:blue", "SE3": "tab:orange", "EGNN": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labelled: set = set()
    for run in record.get("runs", []):
        curve = [c for c in run["curve"] if "test_mse_x" in c]
        if not curve:
            continue
        epochs = [c["epoch"] for c in curve]
        group = run["group"]
        colour = colours.get(group, "black")
        first = group not in labelled  # one legend entry per model, not per seed
        labelled.add(group)
        seeds = sum(r["group"] == group for r in record["runs"])
        label = f"{group} test (lr {run['lr']:.0e}, {seeds} seed{'s' * (seeds > 1)})" if first else None
        axes[0].plot(epochs, [c["test_mse_x"] for c in curve], color=colour, lw=1, label=label)
        axes[1].plot(epochs, [c["test_mse_v"] for c in curve], color=colour, lw=1, label=label)
        val = [c for c in curve if "val_mse_x" in c]
        if val:
            axes[0].plot([c["epoch"] for c in val], [c["val_mse_x"] for c in val], color=colour,
                         lw=0.8, ls="--", alpha=0.6, label=f"{group} validation" if first else None)
    names = list(dict.fromkeys(label for label, _, _ in REFERENCES[benchmark]))
    styles = [":", "--", "-.", (0, (1, 3)), (0, (5, 2))]
    for label, panel, value in REFERENCES[benchmark]:  # one line style per reference, both panels
        axes[panel].axhline(value, color="gray", ls=styles[names.index(label) % len(styles)], lw=1, label=label)
    for ax, name in zip(axes, ("MSE x (positions)", "MSE v (velocities)")):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(TITLES[benchmark])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_json(json_path, png_path, benchmark: str | None = None) -> None:
    """Redraw a benchmark's learning curves from its published JSON record alone."""
    record = json.loads(Path(json_path).read_text())
    plot_curves(record, Path(png_path), benchmark or record.get("protocol", {}).get("benchmark", "table1"))


BENCHMARKS = ("table1", "egnn_protocol")
COMMAND_NAMES = {"table1": "reproduce-table1", "egnn_protocol": "reproduce-nbody-egnn"}


def _check(cfg: DictConfig) -> None:
    """Clear one-line errors for settings that would fail after hours of work."""
    if cfg.benchmark not in BENCHMARKS:
        raise ValueError(f"config key benchmark must be one of {', '.join(BENCHMARKS)}, got {cfg.benchmark!r}")
    bad = sorted(set(cfg.groups) - set(MODELS))
    if bad or not cfg.groups:
        raise ValueError(f"config key groups must list some of {', '.join(MODELS)}, got {list(cfg.groups)}")
    for key in ("epochs", "lr_epochs"):  # else found only after step 1's hours
        check_int(f"config key {key}", cfg[key], 1)
    if not float(cfg.cpus_per_trial) > 0:
        raise ValueError(f"config key cpus_per_trial must be a positive number, got {cfg.cpus_per_trial!r}")
    if not cfg.seeds:
        raise ValueError("config key seeds must list at least one seed, got []")
    if not cfg.lr_by_group and (not cfg.lr_grid or any(float(x) <= 0 for x in cfg.lr_grid)):
        raise ValueError(f"config key lr_grid must list positive learning rates, got {list(cfg.lr_grid)}")
    for key in ("val_sims", "final_val_sims"):
        if int(cfg[key]) < 0:
            raise ValueError(f"config key {key} must be >= 0, got {cfg[key]}")
    if not cfg.lr_by_group and int(cfg.val_sims) < 1:
        raise ValueError("config key val_sims must be >= 1: learning rates are chosen on a validation split "
                         "held out of the training simulations, never on the test set (or give lr_by_group)")
    if cfg.lr_by_group:
        missing = sorted(set(cfg.groups) - set(cfg.lr_by_group))
        if missing:
            raise ValueError(f"config key lr_by_group lacks a rate for {', '.join(missing)}")


def reproduce_command(cfg: DictConfig) -> int:
    from invattn.pipeline.config import load_config
    from invattn.simulator.cli import simulate_command

    output_paths(cfg)  # bad keys fail before any work
    _check(cfg)
    final_name = f"{cfg.sweep_prefix}_final"
    if cfg.publish_only:
        return _publish(cfg, Path(cfg.results_dir).resolve() / final_name)
    data = Path(cfg.data_dir)
    if not (data / "train.h5").is_file() or not (data / "test.h5").is_file():
        print(f"== simulating preset={cfg.simulate_preset} into {data}", flush=True)
        simulate_command(load_config("simulate", [f"preset={cfg.simulate_preset}", f"out={data}"]))
    groups = ",".join(str(g) for g in cfg.groups)
    common = [f"results_dir={cfg.results_dir}", f"data.dir={data}",
              f"resources.cpus_per_trial={cfg.cpus_per_trial}", f"search.groups=[{groups}]"]
    if cfg.ray_address:
        common.append(f"ray.address={cfg.ray_address}")
    lr_by_group = OmegaConf.to_container(cfg.lr_by_group) if cfg.lr_by_group else None
    if not lr_by_group:
        print(f"== step 1: learning-rate sweep, chosen on the last {cfg.val_sims} training simulations",
              flush=True)
        lr_grid = ",".join(str(float(x)) for x in cfg.lr_grid)
        lr_dir = _sweep([f"preset={cfg.lr_preset}", f"name={cfg.sweep_prefix}_lr", *common,
                         f"search.lr=[{lr_grid}]", f"train.epochs={cfg.lr_epochs}",
                         f"data.val_sims={cfg.val_sims}", "metric=val_mse_x"])
        lr_by_group = best_lr_per_group(collect_runs(lr_dir), metric="val_mse_x")
        print(f"chosen learning rates (validation MSE x): {lr_by_group}", flush=True)
    rates = ", ".join(f"{g}: {lr_by_group[g]}" for g in cfg.groups)
    seeds = ",".join(str(int(s)) for s in cfg.seeds)
    print("== step 2: final runs", flush=True)
    final_dir = _sweep([f"preset={cfg.final_preset}", f"name={final_name}", *common,
                        f"search.lr_by_group={{{rates}}}", f"search.seeds=[{seeds}]",
                        f"train.epochs={cfg.epochs}", f"data.val_sims={cfg.final_val_sims}"])
    return _publish(cfg, final_dir)


def output_paths(cfg: DictConfig) -> list[tuple[Path, Path, Path]]:
    """``(json, plot, markdown)`` targets: this run's folder, then ``docs/`` when ``publish``."""
    name = Path(cfg.publish_json).stem  # e.g. nbody_table1
    out = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.results_dir) / str(cfg.benchmark)
    targets = [(out / f"{name}.json", out / f"{name}_curves.png", out / f"{cfg.benchmark}.md")]
    check_bool("config key publish", cfg.publish)
    if cfg.publish:
        targets.append((Path(cfg.publish_json), Path(cfg.publish_plot), Path(cfg.publish_markdown)))
    return targets


def _publish(cfg: DictConfig, final_dir: Path) -> int:
    """Write the JSON record, the plot and the table from the final sweep's runs, finished or not."""
    targets = output_paths(cfg)  # bad keys fail before any work
    if not SweepLayout.of_results(final_dir).experiment.is_dir():
        raise FileNotFoundError(f"no final runs to publish in {final_dir}")
    runs = collect_runs(final_dir)
    lr_dir = final_dir.parent / f"{cfg.sweep_prefix}_lr"
    lr_runs = collect_runs(lr_dir) if SweepLayout.of_results(lr_dir).experiment.is_dir() else []
    # The command that produced the runs (publish_only=true only reports on them).
    saved = final_dir / "command.txt"
    name = COMMAND_NAMES[str(cfg.benchmark)]
    command = saved.read_text().strip() if cfg.publish_only and saved.is_file() else (
        f"invattn {name} " + " ".join(shlex.quote(a) for a in sys.argv[2:])).strip()
    if not cfg.publish_only:
        write_atomic(saved, command + "\n")
    protocol = {"benchmark": str(cfg.benchmark), "data_dir": str(cfg.data_dir),
                "simulate_preset": str(cfg.simulate_preset),
                "sweep_presets": [str(cfg.lr_preset), str(cfg.final_preset)],
                "lr_chosen_on": f"validation: the last {cfg.val_sims} training simulations "
                                f"(never the test set)",
                "final_val_sims": int(cfg.final_val_sims), "lr_grid": [float(x) for x in cfg.lr_grid],
                "lr_epochs": int(cfg.lr_epochs)}
    record = summarize(runs, command=command, epochs=int(cfg.epochs), lr_runs=lr_runs, protocol=protocol)
    for out, plot, markdown in targets:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(record, indent=1) + "\n")
        plot_json(out, plot, str(cfg.benchmark))
        update_markdown(markdown, record, str(cfg.benchmark))
    shown = ("mse_x", "mse_x_best_val", "mse_v", "lr", "epochs")
    print(json.dumps({g: {k: record[g].get(k) for k in shown} for g in record if g in MODELS}, indent=2))
    for out, plot, markdown in targets:
        print(f"wrote {out}, {plot} and {markdown}", flush=True)
    if not cfg.publish:
        print(f"(docs/ is unchanged; publish these numbers with `invattn {name} "
              f"publish_only=true publish=true` and the same settings)", flush=True)
    return 0
