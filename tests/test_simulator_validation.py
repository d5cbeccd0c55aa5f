"""Bad input to simulate() and to the simulate config raises a ValueError naming the argument."""
from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from invattn.pipeline.config import ConfigError, load_config
from invattn.simulator import initial_conditions, simulate
from invattn.simulator.generate import SimulationSettings


@pytest.fixture(scope="module")
def state():
    return initial_conditions(0, "train", 0, 3, n_bodies=4, dim=3)


def _call(state, **changes):
    x, v, q = state
    args = dict(positions=x, velocities=v, charges=q)
    kw = dict(n_steps=300, sample_freq=100, dt=1e-3, box_size=5.0)
    for key, value in changes.items():
        (args if key in args else kw)[key] = value
    return simulate(args["positions"], args["velocities"], args["charges"], **kw)


def test_valid_call_works(state):
    pos, vel = _call(state)
    assert pos.shape == vel.shape == (3, 2, 4, 3)
    empty_pos, _ = _call(state, positions=state[0][:0], velocities=state[1][:0], charges=state[2][:0])
    assert empty_pos.shape == (0, 2, 4, 3)


@pytest.mark.parametrize("changes, pattern", [
    (dict(positions=np.zeros((3, 1, 3)), velocities=np.zeros((3, 1, 3)), charges=np.ones((3, 1))),
     r"n_bodies must be >= 2"),
    (dict(n_steps=250), r"n_steps \(250\) must be a multiple of sample_freq \(100\)"),
    (dict(n_steps=100), r"n_steps \(100\) must be at least 2 \* sample_freq"),
    (dict(n_steps=0), r"n_steps must be >= 1"),
    (dict(sample_freq=0), r"sample_freq must be >= 1"),
    (dict(sample_freq=-5), r"sample_freq must be >= 1"),
    (dict(sample_freq=2.5), r"sample_freq must be an integer"),
    (dict(n_steps=True), r"n_steps must be an integer"),
    (dict(dt=0.0), r"dt must be a finite number > 0"),
    (dict(dt=-1e-3), r"dt must be a finite number > 0"),
    (dict(dt=float("nan")), r"dt must be a finite number > 0"),
    (dict(box_size=-1.0), r"box_size must be a finite number >= 0"),
    (dict(box_size=float("inf")), r"box_size must be a finite number >= 0"),
    (dict(positions=np.zeros((3, 4))), r"positions must have shape \[n_sims, n_bodies, dim\]"),
    (dict(velocities=np.zeros((3, 4, 2))), r"velocities shape \(3, 4, 2\) must equal positions shape"),
    (dict(velocities=np.zeros((2, 4, 3))), r"velocities shape \(2, 4, 3\) must equal positions shape"),
    (dict(charges=np.ones((3, 5))), r"charges shape \(3, 5\) must be \[n_sims, n_bodies\]"),
    (dict(charges=np.ones(3)), r"charges must have shape \[n_sims, n_bodies\]"),
    (dict(positions=np.array([["a"]])), r"positions must hold real numbers"),
])
def test_bad_arguments_are_named(state, changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        _call(state, **changes)


@pytest.mark.parametrize("name, index", [("positions", 1), ("velocities", 2), ("charges", 0)])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_are_named(state, name, index, bad):
    arrays = dict(zip(("positions", "velocities", "charges"), (a.copy() for a in state)))
    arrays[name][index].flat[0] = bad
    with pytest.raises(ValueError, match=rf"{name} holds non-finite values \(simulation {index}\)"):
        _call(state, **arrays)


def test_positions_far_outside_the_box_are_rejected(state):
    x = state[0].copy()
    x[1, 2, 0] = 16.0
    with pytest.raises(ValueError, match=r"positions must lie within \+-3\*box_size.*simulation 1"):
        _call(state, positions=x)
    _call(state, positions=x, box_size=None)  # no walls: anything finite is fine


def _settings(*overrides):
    return SimulationSettings.from_config(load_config("simulate", list(overrides)))


@pytest.mark.parametrize("override, pattern", [
    ("n_bodies=1", r"config key n_bodies must be >= 2"),
    ("n_train=-1", r"config key n_train must be >= 0"),
    ("n_test=-3", r"config key n_test must be >= 0"),
    ("n_steps=5050", r"n_steps/sample_freq: n_steps \(5050\) must be a multiple of sample_freq"),
    ("n_steps=100", r"n_steps/sample_freq: n_steps \(100\) must be at least 2 \* sample_freq"),
    ("sample_freq=0", r"config key sample_freq must be >= 1"),
    ("dt=0", r"config key dt must be > 0"),
    ("dt=-0.1", r"config key dt must be > 0"),
    ("box_size=-2", r"config key box_size must be >= 0"),
    ("loc_std=0", r"config key loc_std must be > 0"),
    ("vel_norm=-1", r"config key vel_norm must be >= 0"),
    ("seed=-1", r"config key seed must be >= 0"),
    ("dim=0", r"config key dim must be >= 1"),
    ("block_size=0", r"config key block_size must be >= 1"),
    ("n_shards=0", r"config key n_shards must be >= 1"),
    ("n_bodies=abc", r"config key n_bodies must be an integer, got 'abc'"),
    ("progress=maybe", r"config key progress must be auto, true or false"),
    ("num_threads=100000", r"config key num_threads=100000 exceeds"),
])
def test_bad_config_values_are_named(override, pattern):
    with pytest.raises(ValueError, match=pattern):
        _settings(override)


@pytest.mark.parametrize("overrides", [("n_shards=4", "shard_index=4"), ("n_shards=4", "shard_index=-1"),
                                       ("shard_index=1",)])
def test_shard_index_out_of_range(overrides):
    with pytest.raises(ValueError, match=r"config key shard_index"):
        _settings(*overrides)


def test_nothing_to_simulate():
    with pytest.raises(ValueError, match=r"n_train and n_test are both 0"):
        _settings("n_train=0", "n_test=0")


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'n_bodys'.*n_bodies"):
        load_config("simulate", ["n_bodys=3"])
    # The command checks keys itself too, for configs built without load_config.
    cfg = dict(load_config("simulate", []))
    cfg["n_bodys"] = 3
    with pytest.raises(ValueError, match=r"unknown config key\(s\) for simulate: n_bodys"):
        SimulationSettings.from_config(cfg)


def test_box_size_null_and_zero_mean_no_walls():
    assert _settings("box_size=null").box_size == 0.0
    assert _settings("box_size=0").box_size == 0.0


@pytest.mark.parametrize("module", ["invattn.simulator.dynamics", "invattn.simulator.initial"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
