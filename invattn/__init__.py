"""invattn: SE(3)- and E(3)-equivariant self-attention from invariant features, as an HPC pipeline.

The installed package is one namespace mapped onto the repository's top-level folders (see
``pyproject.toml``), so nothing shadows a user's own ``models`` or ``pipeline`` package:

- ``invattn.models``    -> ``models/``    the attention networks (paper sections 2-3)
- ``invattn.simulator`` -> ``simulator/`` the Numba charged N-body simulator
- ``invattn.pipeline``  -> ``pipeline/``  QM9 preprocessing, data readers, training, the Lorentz task
- ``invattn.cli``, ``files``, ``checks``, ``guard`` (``invattn/``): the ``invattn`` command dispatcher,
  atomic writes, value checks, one-line command errors
- ``invattn.sweeps``    -> ``sweeps/``    Ray Tune sweeps, locally or on SLURM via submitit
- ``invattn.configs``   -> ``configs/``   the default YAML configs (package data)
"""
__version__ = "0.1.0"
