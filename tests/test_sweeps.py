"""Ray Tune sweeps on a real local Ray instance: end to end, dashboard auth, retry, resume."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from invattn.sweeps.cli import load_sweep_configs
from invattn.sweeps.ray_cluster import free_port, set_auth_mode
from invattn.sweeps.runner import run_sweep

pytestmark = pytest.mark.slow

TRAIN = ["train.epochs=2", "train.batch_size=32", "train.tensorboard=false",
         "data.max_test_sims=32", "model.group=E3"]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One real local Ray instance (dashboard on 127.0.0.1, token auth on) for this module."""
    token_file = tmp_path_factory.mktemp("ray_auth") / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    set_auth_mode("token")
    import ray

    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=free_port(18265), log_to_driver=False)
    yield ctx, token_file.read_text().strip()
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def configs(data, results, *args):
    return load_sweep_configs([f"results_dir={results}", f"data.dir={data}", "verbose=0", *TRAIN, *args])


def test_two_trial_sweep_and_dashboard_auth(nbody_tiny, tmp_path, ray_local):
    ctx, token = ray_local
    sweep_cfg, train_cfg = configs(nbody_tiny, tmp_path, "name=two", "search.lr=[1e-3,3e-3]")
    best = run_sweep(sweep_cfg, train_cfg)
    table = pd.read_csv(tmp_path / "two" / "trials.csv")
    assert len(table) == 2 and set(table.status) == {"OK"}
    assert sorted(table.lr) == [1e-3, 3e-3] and set(table.epoch) == {2}
    assert best["metrics"]["test_mse_x"] == pytest.approx(table.test_mse_x.min())
    assert Path(best["checkpoint"]).is_file()

    url = ctx.dashboard_url if ctx.dashboard_url.startswith("http") else f"http://{ctx.dashboard_url}"
    assert url.startswith("http://127.0.0.1:")
    assert requests.get(f"{url}/api/version", timeout=10).status_code == 401
    bad = requests.get(f"{url}/api/version", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert bad.status_code == 403
    ok = requests.get(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ok.status_code == 200 and "ray_version" in ok.json()


def test_failed_trial_is_retried(nbody_tiny, tmp_path, ray_local):
    sweep_cfg, train_cfg = configs(nbody_tiny, tmp_path, "name=retry", "search.lr=[1e-3]",
                                   "fault_injection.crash_once_at_epoch=1", "max_failures=1")
    run_sweep(sweep_cfg, train_cfg)
    table = pd.read_csv(tmp_path / "retry" / "trials.csv")
    assert list(table.status) == ["OK"] and list(table.epoch) == [2]
    markers = list((tmp_path / "retry" / "ray").rglob(".crashed_once"))
    assert len(markers) == 1  # it really died once, and the retry finished it
    metrics = [line for line in (markers[0].parent / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2  # resumed from the epoch-1 checkpoint, epoch 1 not redone


def test_interrupted_sweep_resumes_without_redoing_finished_trials(nbody_tiny, tmp_path, ray_local):
    import ray

    ctx, _ = ray_local
    address = ray.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "invattn.cli", "sweep", f"ray.address={address}",
            "name=cut", f"results_dir={tmp_path}", f"data.dir={nbody_tiny}", "verbose=0",
            "search.lr=[1e-3,2e-3,3e-3]", "max_concurrent_trials=1", *TRAIN]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "cut" / "ray" / "cut"
    deadline = time.time() + 240
    finished: list[Path] = []
    # One trial at a time: once a second trial has logged an epoch, the first is finished.
    while time.time() < deadline and len(finished) < 2:
        finished = sorted(exp.glob("*/run/metrics.jsonl"))  # trial 00000 first
        finished = [p for p in finished if p.read_text().strip()]
        time.sleep(0.5)
    assert len(finished) >= 2, "the first trial did not finish in time"
    finished = finished[:1]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    # A retrained epoch would log a new record (its seconds_per_epoch differ) and a new
    # checkpoint; Tune itself may re-copy trial files on restore, so compare contents.
    ckpt = lambda p: (p.parent / "checkpoints" / "last.pt").read_bytes()  # noqa: E731
    stamp = {p: (p.read_text(), ckpt(p)) for p in finished}
    table_path = tmp_path / "cut" / "trials.csv"
    assert proc.returncode == 130, out  # interrupted, and says so
    assert "resume=true" in out
    assert "UNFINISHED" in set(pd.read_csv(table_path).status)

    # Resuming needs only the sweep's name: its settings were saved with it.
    resume = args[:5] + ["name=cut", f"results_dir={tmp_path}", "resume=true"]
    rc = subprocess.run(resume, capture_output=True, text=True, timeout=400)
    assert rc.returncode == 0, rc.stdout[-3000:] + rc.stderr[-3000:]
    table = pd.read_csv(table_path)
    assert len(table) == 3 and set(table.status) == {"OK"} and set(table.epoch) == {2}
    for p, (text, blob) in stamp.items():
        assert p.read_text() == text and ckpt(p) == blob, f"{p} was retrained after resume"


def test_resume_refuses_changed_settings(nbody_tiny, tmp_path):
    from invattn.sweeps.runner import save_configs

    sweep_cfg, train_cfg = configs(nbody_tiny, tmp_path, "name=saved")
    save_configs(tmp_path / "saved", sweep_cfg, train_cfg)
    with pytest.raises(ValueError, match="cannot change search.lr, train.epochs"):
        load_sweep_configs([f"results_dir={tmp_path}", "name=saved", "resume=true",
                            "search.lr=[1e-2]", "train.epochs=9"])
    again, train_again = load_sweep_configs([f"results_dir={tmp_path}", "name=saved", "resume=true"])
    assert train_again.data.dir == str(nbody_tiny) and again.resume


def test_resume_accepts_the_first_runs_overrides_again(nbody_tiny, tmp_path, monkeypatch):
    """A requeued slurm/sweep.sh job, or a user adding resume=true to the same command, repeats
    every override of the first run (data.dir relative, as typed): that changes nothing."""
    from invattn.sweeps.runner import _absolute_paths, save_configs

    monkeypatch.chdir(nbody_tiny.parent)
    args = [f"results_dir={tmp_path}", "name=again", f"data.dir={nbody_tiny.name}", "verbose=0", *TRAIN,
            "search.lr=[1e-3,3e-3]", "search.subdeterminants=[all,4]"]
    sweep_cfg, train_cfg = load_sweep_configs(args)
    save_configs(tmp_path / "again", sweep_cfg, _absolute_paths(train_cfg))  # as run_sweep saves them
    again, train_again = load_sweep_configs([*args, "resume=true", "ray.num_cpus=1"])
    assert again.resume and list(again.search.lr) == [1e-3, 3e-3]
    assert train_again.data.dir == str(nbody_tiny.resolve()) and train_again.train.epochs == 2
    with pytest.raises(ValueError, match="cannot change train.epochs$"):
        load_sweep_configs([*args, "resume=true", "train.epochs=3"])
    with pytest.raises(ValueError, match="cannot change search.subdeterminants$"):
        load_sweep_configs([*args[:-1], "search.subdeterminants=[all]", "resume=true"])


def test_bad_sweep_settings_are_named(nbody_tiny, tmp_path):
    from invattn.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="search.lr"):
        load_sweep_configs(["search.lrr=[1e-3]"])
    sweep_cfg, train_cfg = configs(nbody_tiny, tmp_path, "resume=true", "name=nothing")
    with pytest.raises(ValueError, match="no sweep to resume"):
        run_sweep(sweep_cfg, train_cfg)
    with pytest.raises(ValueError, match="must be a list"):
        run_sweep(*configs(nbody_tiny, tmp_path, "name=scalar", "search.lr=1e-3"))
    with pytest.raises(FileNotFoundError, match="invattn simulate"):
        run_sweep(*load_sweep_configs([f"results_dir={tmp_path}", "name=nodata",
                                       f"data.dir={tmp_path / 'nowhere'}"]))


def test_demo_sweep_ranks_by_validation_mse_on_held_out_training_simulations():
    from invattn.pipeline.config import ConfigError

    sweep_cfg, train_cfg = load_sweep_configs(["preset=demo"])
    assert sweep_cfg.metric == "val_mse_x" and sweep_cfg.mode == "min"
    assert train_cfg.data.val_sims == 100 and train_cfg.data.dir == "data/nbody_demo"
    assert sweep_cfg.report_metrics[0] == "val_mse_x" and "test_mse_x" in sweep_cfg.report_metrics
    # The command line wins over the sweep's train_overrides ...
    _, train_cfg = load_sweep_configs(["preset=demo", "data.val_sims=20"])
    assert train_cfg.data.val_sims == 20
    # ... and ranking on a validation split that does not exist is refused before any trial runs.
    with pytest.raises(ConfigError, match="metric=val_mse_x .* data.val_sims is 0"):
        load_sweep_configs(["preset=demo", "data.val_sims=0"])
    assert load_sweep_configs([])[0].metric == "test_mse_x"  # other sweeps keep their default


def test_best_trial_line_names_the_swept_group_and_seed():
    """With search.groups=[E2,SE2] two trials share lr and subdeterminants: the best-trial line
    must say which group won (best.json always did; the printed line did not)."""
    from invattn.sweeps.runner import best_trial_summary

    metrics = {"test_mse_x": 0.36924, "test_mse_v": 1.2859, "epoch": 1}
    line = best_trial_summary({"group": "E2", "lr": 1e-3, "subdeterminants": "all", "seed": 0}, metrics,
                              ["test_mse_x", "test_mse_v"])
    assert line == "group=E2 lr=0.001 subdeterminants=all test_mse_x=0.3692 test_mse_v=1.286"
    line = best_trial_summary({"lr": 3e-3, "subdeterminants": 4, "seed": 2}, metrics, ["test_mse_x"],
                              with_seed=True)
    assert line == "lr=0.003 subdeterminants=4 seed=2 test_mse_x=0.3692"
    # search.lr_by_group: the lr comes from the winning group's entry
    line = best_trial_summary({"group": "SE3", "lr_by_group": {"E3": 1e-3, "SE3": 3e-4},
                               "subdeterminants": "all"}, metrics, [])
    assert line == "group=SE3 lr=0.0003 subdeterminants=all"
