"""The Lorentz task (issue 12): the seeded decay-event generator, the Lorentz-invariant four-momentum
model (boosts with rapidity up to 2 and rotations, float64), and `invattn lorentz` end to end."""
from __future__ import annotations

import json

import pytest
import torch

from invattn.models.four_momenta import DeepSetsBaseline, FourMomentumModel
from invattn.cli import main as cli
from invattn.pipeline.lorentz.events import boosted, invariant_mass, make_events, random_boosts

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
ETA = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=F64))
PARITY = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=F64))
TIME_REVERSAL = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=F64))


def test_events_carry_their_invariant_mass():
    events = make_events(300, seed=4)
    assert events.momenta.shape == (300, 6, 4) and events.labels.shape == (300, 6, 1)
    assert events.labels.sum((1, 2)).eq(3).all()
    torch.testing.assert_close(invariant_mass(events.momenta * events.labels), events.mass, rtol=0, atol=1e-12)
    squared = events.momenta[..., 0] ** 2 - events.momenta[..., 1:].pow(2).sum(-1)
    background = events.labels[..., 0] == 0
    assert squared[background].abs().max() < 1e-12  # massless
    torch.testing.assert_close(squared[~background], torch.full_like(squared[~background], 0.01))
    assert ((events.mass >= 1.0) & (events.mass <= 3.0)).all()
    again = make_events(300, seed=4)
    assert torch.equal(again.momenta, events.momenta)  # seeded
    assert not torch.equal(make_events(300, seed=5).momenta, events.momenta)


def test_boosts_are_lorentz_transformations_that_change_the_momenta():
    lam = random_boosts(50, seed=1, max_rapidity=2.0)
    torch.testing.assert_close(lam.transpose(-1, -2) @ ETA @ lam, ETA.expand(50, 4, 4))
    assert (torch.linalg.det(lam) > 0).all() and (lam[:, 0, 0] >= 1).all()  # proper, orthochronous
    assert float(torch.acosh(lam[:, 0, 0]).max()) > 1.5  # rapidities reach toward 2
    events = make_events(100, seed=2)
    moved = boosted(events, seed=3)
    torch.testing.assert_close(invariant_mass(moved.momenta * moved.labels), events.mass, rtol=0, atol=1e-11)
    assert (moved.momenta - events.momenta).abs().mean() > 0.5


def test_generator_refuses_bad_settings():
    with pytest.raises(ValueError, match="mass_range"):
        make_events(10, 0, mass_range=(0.2, 1.0))
    with pytest.raises(ValueError, match="background >= 0"):
        make_events(10, 0, background=-1)


@pytest.mark.parametrize("group", ["SO+(1,3)", "O(1,3)"])
def test_four_momentum_model_is_lorentz_invariant(group):
    torch.manual_seed(0)
    model = FourMomentumModel(labels=1, group=group).double()
    with torch.no_grad():
        check_invariance(model, group)


def check_invariance(model, group):
    events = make_events(8, seed=6)
    out = model(events.momenta, events.labels)
    lam = random_boosts(8, seed=7, max_rapidity=2.0)
    moved = model(events.momenta @ lam.transpose(-1, -2), events.labels)
    assert float((moved - out).abs().max() / out.abs().max()) < 1e-10
    for flip in (PARITY, TIME_REVERSAL):
        flipped = model(events.momenta @ flip.T, events.labels)
        change = float((flipped - out).abs().max() / out.abs().max())
        if group == "O(1,3)":
            assert change < 1e-10
        else:  # SO+(1,3) reads the subdeterminants, which flip sign under P and T
            assert change > 1e-4


def test_four_momentum_model_errors():
    with pytest.raises(ValueError, match="four-momenta need a group acting on 4-vectors"):
        FourMomentumModel(group="SE3")
    with pytest.raises(ValueError, match=r"momenta has shape \[2, 5, 3\], expected \[\*, \*, 4\]"):
        FourMomentumModel()(torch.zeros(2, 5, 3), torch.zeros(2, 5, 1))
    assert DeepSetsBaseline()(torch.zeros(2, 5, 4), torch.zeros(2, 5, 1)).shape == (2,)


def test_lorentz_command_end_to_end(tmp_path, capsys):
    """A few epochs: ours learns the mass (beats the constant), and its error is the same on boosted
    events; the DeepSets baseline's error grows on them."""
    out = tmp_path / "lz"
    assert cli(["lorentz", f"out={out}", "n_train=1000", "n_test=300", "epochs=6", "num_threads=1"]) == 0
    assert "attention SO+(1,3)" in capsys.readouterr().out
    results = json.loads((out / "metrics.json").read_text())["results"]
    ours, deepsets = results["attention SO+(1,3)"], results["DeepSets (raw components)"]
    constant = results["constant (training mean)"]["test"]["mae"]
    assert ours["test"]["mae"] < 0.8 * constant, results
    assert abs(ours["test_boosted"]["mae"] - ours["test"]["mae"]) < 1e-9 * ours["test"]["mae"]
    assert deepsets["test_boosted"]["mae"] > 1.2 * deepsets["test"]["mae"], results
    assert cli(["lorentz", "--help"]) == 0
    assert "test_boost_rapidity" in capsys.readouterr().out


def test_lorentz_command_bad_settings_are_one_line(tmp_path, capsys):
    assert cli(["lorentz", f"out={tmp_path}", "epochs=0"]) == 2
    assert "invattn lorentz: error: epochs must be an integer >= 1, got 0" in capsys.readouterr().err
    assert cli(["lorentz", f"out={tmp_path}", "n_train=10", "n_test=5", "group=SE3"]) == 2
    assert "four-momenta need a group acting on 4-vectors, got 'SE3'" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()
