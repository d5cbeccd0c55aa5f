"""N-body trajectories (HDF5 from :mod:`simulator`) as training windows."""
from invattn.pipeline.nbody.dataset import NBodyWindows

__all__ = ["NBodyWindows"]
