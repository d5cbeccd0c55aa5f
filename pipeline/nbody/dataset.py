"""Prediction windows over simulated N-body trajectories (DESIGN section 4, paper section 3).

A sample is a simulation ``s`` and a start frame ``f``: the input is the state at frame ``f``
(positions, velocities, charges) and the target is the change of state ``delta_frames`` frames
later (displacement and velocity change).  Training draws ``f`` uniformly at random for every
simulation in every epoch, from a generator seeded by ``(seed, epoch)``, so a resumed run sees
exactly the batches an uninterrupted one would.  Testing spreads start frames evenly over the
valid range, deterministically.

Batches are built by NumPy fancy indexing on arrays held in memory (the paper's training set
is 5000 x 49 x 5 x 3 float64, about 30 MB per array), which is much faster than a per-sample
``DataLoader`` for 5-body systems and has no worker-seeding pitfalls.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__all__ = ["NBodyWindows", "NBodyBatch"]


@dataclass
class NBodyBatch:
    """One batch of windows; every tensor is float ``[B, N, dim]`` except ``charges`` ``[B, N]``.

    ``positions`` are centred per system (centroid 0, subtracted in float64 before any cast).
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    charges: torch.Tensor
    delta_positions: torch.Tensor
    delta_velocities: torch.Tensor

    def to(self, device, dtype=None) -> "NBodyBatch":
        return NBodyBatch(*(t.to(device=device, dtype=dtype) for t in
                            (self.positions, self.velocities, self.charges,
                             self.delta_positions, self.delta_velocities)))


def _read_file(path: Path) -> dict:
    """Read a simulator HDF5 file, validating sources of merged (virtual) files."""
    if not path.is_file():
        other = (f" ({path.parent} holds preprocessed QM9 data, manifest.json: train on it with task=qm9)"
                 if (path.parent / "manifest.json").is_file() else "")
        raise FileNotFoundError(
            f"N-body data file {path} does not exist; generate it with "
            f"`invattn simulate preset=paper out={path.parent}` (or preset=demo){other}")
    from invattn.simulator import io as sim_io  # validates format and every virtual-dataset source

    return sim_io.read_trajectories(path)


class NBodyWindows:
    """Windows ``(frame f) -> (frame f + delta_frames)`` over one HDF5 split file.

    Parameters
    ----------
    path : str or Path
        HDF5 file written by ``invattn simulate`` (``train.h5`` or ``test.h5``).
    delta_frames : int
        Horizon in recorded frames (paper: 5 frames = 500 steps).
    train : bool
        Random start frames (True) or evenly spread deterministic ones (False).
    max_sims : int or None
        Use only the first ``max_sims`` simulations (of those ``sims`` selects).
    seed : int
        Seed of the start-frame generator (combined with the epoch).
    sims : (int, int) or None
        Use only simulations ``first .. stop - 1`` of the file (a validation split held out of
        the training file; negative numbers count from the end as in Python slices).
    start_frame : int or None
        ``None``: start frames as above. An int: every window starts at this frame (the EGNN
        paper's protocol: frame 30 -> frame 40).

    Raises
    ------
    FileNotFoundError
        The file is missing (the message says how to generate it).
    ValueError
        ``delta_frames`` is not in ``1 .. n_frames - 1``, ``start_frame + delta_frames`` is past
        the last frame, ``max_sims`` is not positive, or ``sims`` selects no simulation.
    """

    def __init__(self, path, *, delta_frames: int = 5, train: bool = True,
                 max_sims: int | None = None, seed: int = 0, sims: tuple[int, int] | None = None,
                 start_frame: int | None = None):
        self.path = Path(path)
        data = _read_file(self.path)
        positions, velocities, charges = data["positions"], data["velocities"], data["charges"]
        self.first_sim = 0
        if sims is not None:
            first, stop, _ = slice(*sims).indices(positions.shape[0])
            if stop <= first:
                raise ValueError(f"simulations {sims[0]}..{sims[1]} of {self.path} select none "
                                 f"(the file holds {positions.shape[0]})")
            positions, velocities, charges = (a[first:stop] for a in (positions, velocities, charges))
            self.first_sim = first
        if max_sims is not None:
            if int(max_sims) <= 0:
                raise ValueError(f"max_sims must be positive, got {max_sims}")
            positions, velocities, charges = (a[: int(max_sims)] for a in (positions, velocities, charges))
        n_frames = positions.shape[1]
        if not 1 <= int(delta_frames) < n_frames:
            raise ValueError(f"delta_frames={delta_frames} must be in 1..{n_frames - 1} "
                             f"for {self.path} ({n_frames} frames)")
        if start_frame is not None and not 0 <= int(start_frame) < n_frames - int(delta_frames):
            raise ValueError(f"start_frame={start_frame} with delta_frames={delta_frames} must leave the "
                             f"target inside the {n_frames} frames of {self.path} "
                             f"(start_frame <= {n_frames - 1 - int(delta_frames)})")
        self.start_frame = None if start_frame is None else int(start_frame)
        self.positions = np.ascontiguousarray(positions)
        self.velocities = np.ascontiguousarray(velocities)
        self.charges = np.ascontiguousarray(charges)
        self.delta_frames = int(delta_frames)
        self.train = bool(train)
        self.seed = int(seed)
        attrs = data["attrs"]
        # Time between the input and the target state, in simulation time units.
        self.horizon_time = float(attrs["dt"]) * float(attrs["sample_freq"]) * self.delta_frames
        self.max_start = n_frames - 1 - self.delta_frames

    @property
    def n_sims(self) -> int:
        return self.positions.shape[0]

    @property
    def n_bodies(self) -> int:
        return self.positions.shape[2]

    def __len__(self) -> int:
        return self.n_sims

    def start_frames(self, epoch: int) -> np.ndarray:
        """Start frame of every simulation for ``epoch`` (int64 ``[n_sims]``)."""
        if self.start_frame is not None:
            return np.full(self.n_sims, self.start_frame, dtype=np.int64)
        if self.train:
            rng = np.random.default_rng([self.seed, int(epoch)])
            return rng.integers(0, self.max_start + 1, size=self.n_sims)
        # Evenly spread over 0..max_start, independent of the epoch.
        return (np.arange(self.n_sims) * (self.max_start + 1)) // self.n_sims

    def batches(self, epoch: int, batch_size: int, *, shuffle: bool | None = None,
                dtype=torch.float32) -> Iterator[NBodyBatch]:
        """Yield the epoch's batches (shuffled order for training, fixed order otherwise)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        shuffle = self.train if shuffle is None else shuffle
        starts = self.start_frames(epoch)
        order = np.arange(self.n_sims)
        if shuffle:
            np.random.default_rng([self.seed, int(epoch), 1]).shuffle(order)
        for lo in range(0, self.n_sims, batch_size):
            sims = order[lo: lo + batch_size]
            f0, f1 = starts[sims], starts[sims] + self.delta_frames
            x0, v0 = self.positions[sims, f0], self.velocities[sims, f0]
            x1, v1 = self.positions[sims, f1], self.velocities[sims, f1]
            t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
            # Centre each system in float64 before the cast: float32 absolute positions far from
            # the origin would lose precision (targets are differences, so they are unchanged).
            centred = x0 - x0.mean(axis=1, keepdims=True)
            yield NBodyBatch(t(centred), t(v0), t(self.charges[sims]), t(x1 - x0), t(v1 - v0))
