"""Ray Tune sweeps over learning rate and subdeterminant sampling, local or on SLURM."""
