"""Seconds per epoch of N-body training in the paper's setting, both variants side by side.

Paper setting (Table 1): 5000 training simulations, batch 128, 4 layers.  The paper reports
5.9 s (E(3)) and 9.9 s (SE(3)) per epoch on an NVIDIA A5000 GPU.

    .venv/bin/python benchmarks/train.py [--epochs 3] [--threads 2] [--data data/nbody_paper]
    .venv/bin/python benchmarks/train.py --quick     # 2 epochs on 512 simulations, scaled to 5000

Generates the paper dataset with the simulator first if it is missing (a few seconds).
"""
from __future__ import annotations

import _repo_path  # noqa: F401  (must come before the project's imports)

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from invattn.cli import main as cli
from invattn.pipeline.config import load_config
from invattn.pipeline.training import train
from invattn.pipeline.training.metrics_log import MetricsLog

PAPER = {"E3": 5.9, "SE3": 9.9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per variant (first is warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--data", default="data/nbody_paper", help="paper dataset folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true",
                    help="2 epochs on the first 512 training simulations (s/epoch scaled to 5000): a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 2
    data = Path(args.data)
    if not (data / "train.h5").is_file():
        print(f"generating the paper dataset into {data} ...", flush=True)
        assert cli(["simulate", "preset=paper", f"out={data}"]) == 0
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"device {device}, threads {args.threads}")
    print(f"{'variant':8} {'params':>8} {'s/epoch':>9} {'samples/s':>10} {'paper s/epoch (A5000)':>22}")
    for group in ("E3", "SE3"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config("train_nbody", [
                f"data.dir={data}", f"run_dir={tmp}", f"model.group={group}",
                f"train.epochs={args.epochs}", f"train.num_threads={args.threads}",
                f"train.device={device}", "train.tensorboard=false", "train.progress=false",
                f"train.eval_every={args.epochs}",
                *(["data.max_train_sims=512", "data.max_test_sims=200"] if args.quick else [])])
            train(cfg)
            rec = MetricsLog.read(Path(tmp) / "metrics.jsonl")
            steady = [r["seconds_per_epoch"] for r in rec[1:]] or [rec[0]["seconds_per_epoch"]]
            sec = sum(steady) / len(steady)
            n = 5000 if cfg.data.max_train_sims is None else int(cfg.data.max_train_sims)
            rate = n / sec
            print(f"{group:8} {rec[-1]['params']:>8} {5000 / rate:>9.2f} {rate:>10.0f} {PAPER[group]:>22.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
