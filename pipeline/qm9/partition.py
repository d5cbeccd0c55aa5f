"""What one Dask partition does: load its raw records, parse, perceive bonds, write one shard.

The Dask bag's elements are :class:`RawMolecule` (one per molecule, raw text not yet parsed);
a partition holds exactly the molecules of one shard.  Everything here runs on a worker and
is plain functions of plain data, so it also runs in a single-process loop (the benchmark's
baseline) and under any Dask scheduler.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invattn.pipeline.qm9.bonds import perceive_bonds
from invattn.pipeline.qm9.parse import TARGET_NAMES, MalformedRecordError, parse_csv_row, parse_xyz, split_csv_line
from invattn.pipeline.qm9.shards import shard_name, write_shard
from invattn.pipeline.qm9.sources import SourceRecord
from invattn.pipeline.qm9.split import SPLIT_NAMES

__all__ = ["RawMolecule", "ShardTask", "load_partition", "parse_raw", "process_partition"]


@dataclass(frozen=True)
class ShardTask:
    """The plan of one shard (built by the driver)."""

    index: int
    plan_hash: str
    source_kind: str
    source_paths: tuple[str, ...]
    csv_headers: tuple[tuple[str, ...], ...]
    records: tuple[SourceRecord, ...]
    splits: tuple[int, ...]


@dataclass(frozen=True)
class RawMolecule:
    """One element of the bag: a molecule's raw text (or why it could not be read)."""

    shard: int
    plan_hash: str
    gdb_id: int
    name: str
    line: int | None
    split: int
    kind: str                     # "xyz" or "csv"
    text: str | None
    header: tuple[str, ...] = ()
    error: str | None = None


def load_partition(task: ShardTask, texts: list[str] | None = None) -> list[RawMolecule]:
    """Read the raw text of every molecule of ``task`` (``texts``: given for a tar source)."""
    out = []
    handles: dict[int, object] = {}
    try:
        for k, (rec, split) in enumerate(zip(task.records, task.splits)):
            text, error, header, kind = None, None, (), "xyz"
            try:
                if task.source_kind == "xyz_tar":
                    text = texts[k]
                elif task.source_kind == "xyz_dir":
                    with open(rec.locator, encoding="utf-8") as fh:
                        text = fh.read()
                else:
                    kind = "csv"
                    file_index, offset = rec.locator
                    if file_index not in handles:
                        handles[file_index] = open(task.source_paths[file_index], "rb")
                    fh = handles[file_index]
                    fh.seek(offset)
                    text = fh.readline().decode("utf-8")
                    header = task.csv_headers[file_index]
            except (OSError, UnicodeDecodeError) as exc:
                error = f"cannot read: {exc}"
            out.append(RawMolecule(task.index, task.plan_hash, rec.gdb_id, rec.name, rec.line, split,
                                   kind, text, header, error))
    finally:
        for fh in handles.values():
            fh.close()
    return out


def parse_raw(raw: RawMolecule):
    """Parse one bag element into a Molecule (raises MalformedRecordError naming file and line)."""
    if raw.error is not None:
        raise MalformedRecordError(raw.name, raw.line, raw.error)
    if raw.kind == "xyz":
        mol = parse_xyz(raw.text, raw.name)
    else:
        source = raw.name.rsplit(" line ", 1)[0]
        mol = parse_csv_row(split_csv_line(raw.text, list(raw.header), source, raw.line), source, raw.line)
    if mol.gdb_id != raw.gdb_id:
        raise MalformedRecordError(raw.name, raw.line, f"holds gdb id {mol.gdb_id}, expected {raw.gdb_id}")
    return mol


def process_partition(items: list[RawMolecule], out_dir: str, bond_options: dict) -> list[dict]:
    """Parse, perceive bonds and write the shard of one partition.

    Parameters
    ----------
    items : list of RawMolecule
        All molecules of one shard (same ``shard`` and ``plan_hash``), ascending gdb id.
    out_dir : str
        Output folder; the shard is ``out_dir/shard_NNNNN.h5`` (written atomically).
    bond_options : dict
        Keyword arguments of :func:`pipeline.qm9.bonds.perceive_bonds`.

    Returns
    -------
    list of one dict
        The shard summary (counts, skipped records, timings in seconds); also stored in the
        shard's attributes.
    """
    items = list(items)
    if not items:
        return []
    shard, plan_hash = items[0].shard, items[0].plan_hash
    if any(r.shard != shard or r.plan_hash != plan_hash for r in items):
        raise RuntimeError(f"partition mixes shards: {sorted({r.shard for r in items})}")
    t0 = time.perf_counter()
    t_parse = t_bonds = 0.0
    skipped, methods = [], Counter()
    ids, splits, failed, z_parts, pos_parts, bond_parts, targets, smiles = [], [], [], [], [], [], [], []
    n_atoms, n_bonds = [0], [0]
    for raw in items:
        t = time.perf_counter()
        try:
            mol = parse_raw(raw)
        except MalformedRecordError as exc:
            t_parse += time.perf_counter() - t
            skipped.append({"name": exc.source, "line": exc.line, "reason": exc.reason})
            continue
        t2 = time.perf_counter()
        t_parse += t2 - t
        bonds = perceive_bonds(mol.atomic_numbers, mol.positions, **bond_options)
        t_bonds += time.perf_counter() - t2
        methods[bonds.method] += 1
        ids.append(mol.gdb_id)
        splits.append(raw.split)
        failed.append(bonds.failed)
        z_parts.append(mol.atomic_numbers)
        pos_parts.append(mol.positions)
        rows = np.empty((len(bonds.types), 3), dtype=np.int32)
        rows[:, :2], rows[:, 2] = bonds.pairs, bonds.types
        bond_parts.append(rows)
        targets.append(mol.targets_array())
        smiles.append(mol.smiles or "")
        n_atoms.append(n_atoms[-1] + len(mol.atomic_numbers))
        n_bonds.append(n_bonds[-1] + len(bonds.types))
    m = len(ids)
    arrays = {
        "gdb_id": np.array(ids, dtype=np.int64),
        "split": np.array(splits, dtype=np.int8),
        "bond_perception_failed": np.array(failed, dtype=bool),
        "atom_offsets": np.array(n_atoms, dtype=np.int64),
        "atomic_numbers": np.concatenate(z_parts) if m else np.zeros(0, np.uint8),
        "positions": np.concatenate(pos_parts) if m else np.zeros((0, 3)),
        "bond_offsets": np.array(n_bonds, dtype=np.int64),
        "bonds": np.concatenate(bond_parts) if m else np.zeros((0, 3), np.int32),
        "targets": np.array(targets, dtype=np.float64).reshape(m, len(TARGET_NAMES)),
        "smiles": smiles,
    }
    split_counts = {name: int((arrays["split"] == code).sum()) for code, name in enumerate(SPLIT_NAMES)}
    summary = {
        "shard_index": shard, "file": shard_name(shard), "plan_hash": plan_hash,
        "n_records": len(items), "n_molecules": m, "n_skipped": len(skipped),
        "n_bond_perception_failed": int(np.sum(failed)), "split_counts": split_counts,
        "first_gdb_id": items[0].gdb_id, "last_gdb_id": items[-1].gdb_id, "skipped": skipped,
        "bond_methods": dict(methods),
    }
    t3 = time.perf_counter()
    write_shard(Path(out_dir) / shard_name(shard), arrays,
                {k: v for k, v in summary.items() if k != "file"})
    summary["seconds"] = {"parse": t_parse, "bonds": t_bonds, "write": time.perf_counter() - t3,
                          "total": time.perf_counter() - t0}
    return [summary]
