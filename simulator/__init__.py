"""Numba-parallel charged N-body simulator (paper section 3; NRI generator semantics).

* :func:`simulate` integrates batches of initial states (DESIGN sections 2 and 4);
  :func:`energies` gives kinetic and potential energy of frames.
* :func:`initial_conditions` draws the seeded initial states of a dataset.
* :mod:`simulator.io` reads and validates the HDF5 trajectory files
  (:func:`~simulator.io.read_trajectories`, :func:`~simulator.io.open_trajectories`).
* :mod:`simulator.generate` writes datasets, shards and merged files; the ``invattn simulate``
  and ``invattn simulate-merge`` commands are in :mod:`simulator.cli`.
"""
from invattn.simulator.dynamics import NonFiniteSimulationError, energies, simulate
from invattn.simulator.initial import initial_conditions

__all__ = ["simulate", "energies", "initial_conditions", "NonFiniteSimulationError"]
