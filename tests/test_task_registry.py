"""The task registry: what each task declares, and a task added in one file (this one) trains,
resumes, refuses changed settings and evaluates through the real runtime."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from invattn.models.registry import MODELS, build_model, constructor_config, register_model
from invattn.cli import main as cli
from invattn.pipeline.config import load_config
from invattn.pipeline.training import train
from invattn.pipeline.training.checkpoint import load_checkpoint
from invattn.pipeline.training.cli import evaluate_checkpoint
from invattn.pipeline.training.metrics_log import MetricsLog
from invattn.pipeline.training.task import TASKS, Task, make_task, register_task, task_class, task_names


def test_builtin_tasks_declare_everything_the_pipeline_reads(nbody_tiny, tmp_path):
    assert task_names() == ["nbody", "qm9"]
    for name in task_names():
        cls = task_class(name)
        assert cls.name == name and cls.config_name == f"train_{name}"
        cfg = load_config(cls.config_name, [])
        assert cfg.task == name
        assert cls.default_metric in cls.report_columns
        for key in cls.run_defining:  # every run-defining key is a key of the task's config
            assert OmegaConf.select(cfg, key, default="absent") != "absent", (name, key)
    with pytest.raises(ValueError, match=r"^task='foo' is not one of nbody, qm9$"):
        task_class("foo")
    cfg = load_config("train_nbody", [f"data.dir={nbody_tiny}", f"run_dir={tmp_path}"])
    task = make_task(cfg)
    assert isinstance(task, Task) and task.name == "nbody"
    batch = next(task.train_batches(0, torch.device("cpu")))
    assert isinstance(batch, task.batch_type)


def test_check_data_says_how_to_make_the_missing_data(tmp_path):
    nbody = load_config("train_nbody", [f"data.dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"train\.h5, .*test\.h5 \(make it with `invattn simulate "):
        task_class("nbody").check_data(nbody)
    qm9 = load_config("train_qm9", [f"data.dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"manifest\.json \(make it with `invattn preprocess-qm9 "):
        task_class("qm9").check_data(qm9)


# --- a task defined here, as a new task module would define it ----------------------------------

class Line(nn.Module):
    """y = a x + b: the smallest model with parameters to learn."""

    def __init__(self, init_scale: float = 0.1):
        super().__init__()
        self.config = constructor_config(Line, locals())
        self.linear = nn.Linear(1, 1)
        nn.init.normal_(self.linear.weight, std=init_scale)

    def forward(self, x):
        return self.linear(x.unsqueeze(-1)).squeeze(-1)


class LineTask:
    """Fit y = 3 x - 1 (plus noise) from ``data.n`` points drawn with ``seed``."""

    name = "line"
    config_name = "train_line"  # not shipped: the test builds the config itself
    default_metric = "test_mae"
    report_columns = ("test_mae",)
    run_defining = ("data.n",)
    added_later: dict = {}
    batch_type = tuple

    def __init__(self, cfg):
        gen = torch.Generator().manual_seed(int(cfg.seed))
        x = torch.rand(int(cfg.data.n), generator=gen) * 2 - 1
        y = 3 * x - 1 + 0.01 * torch.randn(len(x), generator=gen)
        self.train_xy, self.test_xy = (x[:-8], y[:-8]), (x[-8:], y[-8:])
        self.batch_size, self.seed = int(cfg.train.batch_size), int(cfg.seed)
        self.model_kwargs = dict(cfg.model)

    @classmethod
    def check_data(cls, cfg, groups=None):
        pass

    @classmethod
    def model_label(cls, cfg):
        return "line"

    @classmethod
    def metric_units(cls, cfg):
        return {}

    @classmethod
    def describe(cls, cfg, metrics):
        return ""

    @classmethod
    def model_for(cls, cfg, config=None):
        return build_model("line", **(dict(cfg.model) if config is None else config))

    def build_model(self, config=None):
        return build_model("line", **(self.model_kwargs if config is None else config))

    def n_train_batches(self):
        return -(-len(self.train_xy[0]) // self.batch_size)

    def train_batches(self, epoch, device):
        order = torch.randperm(len(self.train_xy[0]), generator=torch.Generator().manual_seed(self.seed + epoch))
        for idx in order.split(self.batch_size):
            yield self.train_xy[0][idx].to(device), self.train_xy[1][idx].to(device)

    def loss(self, model, batch):
        x, y = batch
        return (model(x) - y).pow(2).mean()

    @torch.no_grad()
    def evaluate(self, model, device):
        x, y = self.test_xy
        return {"test_mae": (model(x.to(device)).cpu() - y).abs().mean().item()}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.fixture
def line_task():
    register_model("line")(Line)
    register_task(LineTask)
    yield
    del TASKS["line"], MODELS["line"]  # other tests count the registered models


def line_cfg(run_dir, **extra):
    cfg = OmegaConf.create({
        "task": "line", "seed": 1, "run_dir": str(run_dir), "resume": True,
        "data": {"n": 72}, "model": {"init_scale": 0.1},
        "optim": {"lr": 0.2, "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0,
                  "min_lr_factor": 0.0},
        "train": {"epochs": 6, "batch_size": 16, "eval_batch_size": 64, "eval_every": 1,
                  "grad_clip": None, "num_threads": 1, "device": "cpu", "progress": False,
                  "tensorboard": False}})
    for key, value in extra.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_a_task_registered_in_one_module_trains_resumes_and_evaluates(line_task, tmp_path, capsys):
    with pytest.raises(TypeError, match="lacks default_metric"):
        register_task(type("Half", (), {"name": "half", "config_name": "x"}))
    assert isinstance(make_task(line_cfg(tmp_path / "probe")), Task)

    full = train(line_cfg(tmp_path / "full"))
    records = MetricsLog.read(tmp_path / "full" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["test_mae"] < 0.5 * records[0]["test_mae"]
    assert "[line] Line params=2 device=cpu" in capsys.readouterr().out

    class Stop(Exception):
        pass

    def stop_at_three(metrics, _ckpt_dir):
        if metrics["epoch"] == 3:
            raise Stop

    cut = line_cfg(tmp_path / "cut")
    with pytest.raises(Stop):
        train(cut, reporter=stop_at_three)
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert state["epoch"] == 3 and state["model_hparams"] == {"init_scale": 0.1}
    with pytest.raises(ValueError, match=r"data\.n: 72 -> 80"):  # the task's run-defining key
        train(line_cfg(tmp_path / "cut", **{"data.n": 80}))
    resumed = train(cut)
    assert (resumed["train_loss"], resumed["test_mae"]) == (full["train_loss"], full["test_mae"])

    ckpt = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert evaluate_checkpoint(ckpt, device="cpu") == {"epoch": 6, "test_mae": resumed["test_mae"]}
    out = tmp_path / "eval.json"
    assert cli(["evaluate", f"checkpoint={ckpt}", f"output={out}"]) == 0
    assert json.loads(out.read_text()) == {"epoch": 6, "test_mae": resumed["test_mae"]}
    # A checkpoint from before issue 14 saved no model config: its training config rebuilds the model.
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "model_hparams": {}}, ckpt)
    assert evaluate_checkpoint(ckpt, device="cpu") == {"epoch": 6, "test_mae": resumed["test_mae"]}


def test_fit_calls_the_callbacks_in_order_with_the_checkpoint_on_disk(line_task, tmp_path):
    from invattn.pipeline.training.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.calls = []

        def on_fit_start(self, run, cfg, start_epoch):
            self.calls.append(("fit_start", start_epoch))

        def on_epoch_start(self, epoch):
            self.calls.append(("epoch_start", epoch))

        def on_batch_end(self, mean_loss):
            if self.calls[-1][0] != "batch":
                self.calls.append(("batch",))

        def on_train_end(self, epoch):
            self.calls.append(("train_end", epoch))

        def on_epoch_end(self, record):
            self.calls.append(("epoch_end", record["epoch"]))

        def on_checkpoint(self, record, checkpoint_dir):
            saved = load_checkpoint(checkpoint_dir / "last.pt")
            self.calls.append(("checkpoint", saved["epoch"], saved["metrics"] == record))

        def on_fit_end(self):
            self.calls.append(("fit_end",))

    seen = Record()
    train(line_cfg(tmp_path / "run", **{"train.epochs": 2}), callbacks=[seen])
    epoch = lambda e: [("epoch_start", e), ("batch",), ("train_end", e), ("epoch_end", e + 1),  # noqa: E731
                       ("checkpoint", e + 1, True)]
    assert seen.calls == [("fit_start", 0), *epoch(0), *epoch(1), ("fit_end",)]
    again = Record()  # resuming a finished run: nothing to do, the saved metrics come back
    assert train(line_cfg(tmp_path / "run", **{"train.epochs": 2}), callbacks=[again])["epoch"] == 2
    assert again.calls == [("fit_start", 2), ("fit_end",)]
