"""QM9 preprocessing (raw archive or qm9pack CSV -> HDF5 shards on Dask) and its readers.

* :func:`preprocess` -- the stage (``invattn preprocess-qm9``), see :mod:`pipeline.qm9.stage`
* :func:`read_processed` -- one dict per molecule from the output folder
* :class:`~pipeline.qm9.dataset.QM9Dataset`, :func:`~pipeline.qm9.dataset.collate_qm9` -- torch
  side (``from pipeline.qm9.dataset import ...``)
* shard format: :mod:`pipeline.qm9.shards`; units: :mod:`pipeline.qm9.units`
"""
from invattn.pipeline.qm9.parse import TARGET_NAMES, TARGET_UNITS, MalformedRecordError, Molecule, parse_csv_row, parse_xyz
from invattn.pipeline.qm9.reader import load_manifest, read_processed

__all__ = ["TARGET_NAMES", "TARGET_UNITS", "Molecule", "MalformedRecordError", "parse_xyz",
           "parse_csv_row", "read_processed", "load_manifest", "preprocess"]


def __getattr__(name):
    # The stage imports RDKit; readers (the training loop) do not need it.
    if name == "preprocess":
        from invattn.pipeline.qm9.stage import preprocess

        return preprocess
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
