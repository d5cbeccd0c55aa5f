"""The Lorentz task (issue 12): decay events of four-momenta, a Lorentz-invariant target, and the
``invattn lorentz`` command that trains the Lorentz-equivariant model and a DeepSets baseline and
tests both on boosted events (docs/lorentz.md)."""
