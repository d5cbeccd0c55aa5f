"""``invattn lorentz``: train the Lorentz-equivariant model and a DeepSets baseline on decay events,
test both on the plain and on boosted test events (docs/lorentz.md).

Both models regress the parent mass (normalized by the training set's mean and spread) with the
same data, optimizer, schedule and epochs. Metrics per model and test set: mean absolute error of
the mass and mean relative error ``|pred - M| / M``; the constant prediction (the training mean)
is the floor any model must beat.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from invattn.checks import check_folder, check_int
from invattn.files import write_atomic
from invattn.pipeline.lorentz.events import Events, boosted, make_events

__all__ = ["lorentz_command", "train_and_test"]


def _fit(model, train: Events, cfg, mean: float, std: float, gen: torch.Generator) -> float:
    """Adam + cosine schedule on the normalized mass; returns seconds spent."""
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.lr))
    epochs, batch = int(cfg.epochs), int(cfg.batch_size)
    steps = epochs * -(-train.mass.shape[0] // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    target = (train.mass - mean) / std
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(train.mass.shape[0], generator=gen)
        for index in order.split(batch):
            loss = (model(train.momenta[index], train.labels[index]) - target[index]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return time.perf_counter() - start


@torch.no_grad()
def _errors(model, events: Events, mean: float, std: float) -> dict[str, float]:
    model.eval()
    pred = torch.cat([model(events.momenta[i], events.labels[i]) for i in torch.arange(events.mass.shape[0]).split(500)])
    pred = pred.double() * std + mean
    error = (pred - events.mass).abs()
    return {"mae": float(error.mean()), "relative": float((error / events.mass).mean())}


def train_and_test(cfg: DictConfig) -> dict:
    """Train both models as ``cfg`` (configs/lorentz.yaml) says; return the metrics."""
    from invattn.models.four_momenta import DeepSetsBaseline, FourMomentumModel

    seed = int(cfg.seed)
    for key in ("n_train", "n_test", "epochs", "batch_size"):
        check_int(key, cfg[key], 1)
    if float(cfg.lr) <= 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")
    events = dict(background=int(cfg.background), max_rapidity=float(cfg.max_rapidity))
    train = make_events(int(cfg.n_train), seed, **events)
    test = make_events(int(cfg.n_test), seed + 1, **events)
    test_boosted = boosted(test, seed + 2, float(cfg.test_boost_rapidity))
    mean, std = float(train.mass.mean()), float(train.mass.std())
    model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    builders = {
        f"attention {cfg.group}": lambda: FourMomentumModel(labels=1, group=str(cfg.group), **model_kwargs),
        "DeepSets (raw components)": lambda: DeepSetsBaseline(labels=1, hidden=int(cfg.baseline_hidden)),
    }
    constant = {name: {"mae": float((e.mass - mean).abs().mean()), "relative": float(((e.mass - mean).abs() / e.mass).mean())}
                for name, e in (("test", test), ("test_boosted", test_boosted))}
    results = {"constant (training mean)": {**constant, "params": 0, "train_seconds": 0.0}}
    for name, build in builders.items():
        torch.manual_seed(seed)
        model = build().double()
        seconds = _fit(model, train, cfg, mean, std, torch.Generator().manual_seed(seed))
        results[name] = {"test": _errors(model, test, mean, std),
                         "test_boosted": _errors(model, test_boosted, mean, std),
                         "params": sum(p.numel() for p in model.parameters()), "train_seconds": round(seconds, 1)}
    return results


def lorentz_command(cfg: DictConfig) -> int:
    threads = int(cfg.num_threads)
    if threads > 0:
        torch.set_num_threads(threads)
    out = check_folder("out", cfg.out)  # before training, not at the end of it
    results = train_and_test(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "metrics.json", json.dumps({"config": OmegaConf.to_container(cfg), "results": results}, indent=2))
    print(f"{'model':34s} {'params':>7s} {'train s':>8s}  {'MAE test':>9s} {'MAE boosted':>12s}  "
          f"{'rel. test':>9s} {'rel. boosted':>12s}")
    for name, r in results.items():
        print(f"{name:34s} {r['params']:7d} {r['train_seconds']:8.1f}  {r['test']['mae']:9.4f} "
              f"{r['test_boosted']['mae']:12.4f}  {r['test']['relative']:9.4f} {r['test_boosted']['relative']:12.4f}")
    print(f"invattn lorentz: metrics in {out / 'metrics.json'}")
    return 0
