"""Find the molecules of a QM9 source without parsing them (the driver's cheap pass).

A source is one of

* a directory of ``dsgdb9nsd_*.xyz`` files (workers read the files themselves),
* the original archive ``.tar.bz2`` (also ``.tar.gz`` / ``.tar``; read once by the driver,
  since a compressed tar cannot be read at random),
* a ``qm9pack`` CSV file (workers seek to their rows by byte offset),
* the word ``qm9pack``: the three CSV files of the installed ``qm9pack==1.0.3`` package
  (located without importing it: its ``__init__`` needs the removed ``pkg_resources``).

:func:`scan_source` returns one :class:`SourceRecord` per molecule found (id known from the
file name or the ``Index`` column) plus the records that could not even be identified.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from invattn.pipeline.qm9.parse import CSV_COLUMNS, CSV_MOLECULE_COLUMNS, gdb_id_from_name

__all__ = ["SourceRecord", "Source", "resolve_source", "scan_source", "load_excluded_ids",
           "qm9pack_data_files", "DEFAULT_EXCLUDED_IDS_FILE"]

#: The 3,054 uncharacterized QM9 ids, shipped with the package.
DEFAULT_EXCLUDED_IDS_FILE = Path(__file__).with_name("uncharacterized_ids.txt")
_TAR_SUFFIXES = (".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class SourceRecord:
    """Where one molecule's raw text lives.

    ``locator`` is a file path (xyz directory), an archive member name (tar; the driver holds
    the text) or ``(csv_file_index, byte_offset)`` (CSV).  ``line`` is the 1-based CSV line.
    """

    gdb_id: int
    name: str
    locator: object
    line: int | None = None
    size: int = 0


@dataclass
class Source:
    """A resolved QM9 source."""

    kind: str                       # "xyz_dir", "xyz_tar" or "csv"
    description: str                # what the user passed, for the manifest and messages
    paths: list[str]
    csv_headers: list[list[str]] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)   # xyz_tar: gdb_id -> file text

    def fingerprint(self) -> dict:
        """Identity of the source for resume checks (paths, sizes, modification times)."""
        files = [Path(p) for p in self.paths]
        return {"kind": self.kind, "paths": self.paths,
                "sizes": [f.stat().st_size if f.is_file() else None for f in files],
                "mtimes_ns": [f.stat().st_mtime_ns if f.is_file() else None for f in files]}


def qm9pack_data_files() -> list[Path]:
    """The CSV files of the installed ``qm9pack`` package (130,831 molecules).

    Raises ``FileNotFoundError`` with the install command when it is missing.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "source=qm9pack needs the qm9pack package: pip install qm9pack==1.0.3 "
            "(about 100 MB), or pass source=PATH (xyz directory, .tar.bz2 archive or CSV file)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(data.glob("qm9_part*.csv"))
    if not files:
        raise FileNotFoundError(f"qm9pack is installed but {data} holds no qm9_part*.csv files")
    return files


def resolve_source(source: str) -> Source:
    """Turn the ``source=`` value into a :class:`Source` (no reading yet).

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for an unknown form.
    """
    if source is None or str(source).strip() == "":
        raise ValueError("source is required: an xyz directory, a .tar.bz2 archive, a CSV file or qm9pack")
    text = str(source)
    if text == "qm9pack":
        files = qm9pack_data_files()
        return Source("csv", "qm9pack", [str(f) for f in files])
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"QM9 source not found: {text}")
    if path.is_dir():
        return Source("xyz_dir", text, [str(path)])
    if path.name.endswith(_TAR_SUFFIXES):
        return Source("xyz_tar", text, [str(path)])
    if path.suffix == ".csv":
        return Source("csv", text, [str(path)])
    raise ValueError(f"QM9 source {text}: expected a directory of dsgdb9nsd_*.xyz files, a "
                     f".tar.bz2 archive, a qm9pack .csv file or the word qm9pack")


def load_excluded_ids(path: str | os.PathLike | None) -> set[int]:
    """Read a list of 1-based QM9 ids (one per line, ``#`` comments); None = shipped list."""
    path = Path(path) if path else DEFAULT_EXCLUDED_IDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"exclusion id list not found: {path}")
    ids = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            ids.add(int(line))
        except ValueError:
            raise ValueError(f"{path} line {lineno}: {line!r} is not an integer id") from None
    return ids


def _skip(name: str, line: int | None, reason: str) -> dict:
    return {"name": name, "line": line, "reason": reason}


def _scan_dir(src: Source) -> tuple[list[SourceRecord], list[dict]]:
    records, problems = [], []
    with os.scandir(src.paths[0]) as it:
        for entry in it:
            if not (entry.name.startswith("dsgdb9nsd_") and entry.name.endswith(".xyz")):
                continue
            gid = gdb_id_from_name(entry.name)
            if gid is None:
                problems.append(_skip(entry.name, None, "file name has no integer id"))
                continue
            records.append(SourceRecord(gid, entry.name, entry.path, None, entry.stat().st_size))
    if not records and not problems:
        raise ValueError(f"QM9 source {src.description}: no dsgdb9nsd_*.xyz files in this directory")
    return records, problems


def _scan_tar(src: Source) -> tuple[list[SourceRecord], list[dict]]:
    records, problems = [], []
    archive = Path(src.paths[0]).name
    try:
        with tarfile.open(src.paths[0], "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or not (base.startswith("dsgdb9nsd_") and base.endswith(".xyz")):
                    continue
                name = f"{archive}:{base}"
                gid = gdb_id_from_name(base)
                if gid is None:
                    problems.append(_skip(name, None, "file name has no integer id"))
                    continue
                raw = tar.extractfile(member).read()
                try:
                    src.texts[gid] = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.append(_skip(name, None, f"not UTF-8 text ({exc.reason})"))
                    continue
                records.append(SourceRecord(gid, name, base, None, len(raw)))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"QM9 source {src.description}: cannot read the archive: {exc}") from exc
    if not records and not problems:
        raise ValueError(f"QM9 source {src.description}: the archive holds no dsgdb9nsd_*.xyz files")
    return records, problems


def _plain_field(raw: bytes) -> bool:
    """A CSV field without quotes, or one wholly quoted without inner quotes."""
    q = raw.count(b'"')
    return q == 0 or (q == 2 and raw[:1] == b'"' and raw[-1:] == b'"')


def _scan_csv(src: Source) -> tuple[list[SourceRecord], list[dict]]:
    records, problems = [], []
    needed = list(CSV_MOLECULE_COLUMNS) + list(CSV_COLUMNS.values())
    for file_index, path in enumerate(src.paths):
        fname = Path(path).name
        with open(path, "rb") as f:
            first = f.readline()
            header = next(csv.reader([first.decode("utf-8", "replace")]), [])
            missing = [c for c in needed if c not in header]
            if missing:
                raise ValueError(f"{path} line 1: CSV header lacks column(s) {missing}")
            src.csv_headers.append(header)
            col = header.index("Index")
            offset, lineno = len(first), 1
            # Only the Index column is read here (a cheap split); the worker parses the rest.
            for raw in f:
                lineno += 1
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                name = f"{fname} line {lineno}"
                try:
                    parts = raw.split(b",", col + 1)
                    if all(_plain_field(p) for p in parts[:col]):
                        gid = int(parts[col])
                    else:  # a quoted field with a comma before Index: full CSV parse
                        gid = int(next(csv.reader(io.StringIO(raw.decode("utf-8"))))[col])
                except (ValueError, IndexError, UnicodeDecodeError, csv.Error):
                    problems.append(_skip(fname, lineno, "column Index is missing or not an integer"))
                    continue
                records.append(SourceRecord(gid, name, (file_index, start), lineno, len(raw)))
    return records, problems


def scan_source(src: Source) -> tuple[list[SourceRecord], list[dict]]:
    """List the molecules of ``src``.

    Returns
    -------
    records : list of SourceRecord
        Sorted by gdb id.
    problems : list of dict
        ``{name, line, reason}`` for entries that could not be identified (skipped, counted).
    """
    scan = {"xyz_dir": _scan_dir, "xyz_tar": _scan_tar, "csv": _scan_csv}[src.kind]
    records, problems = scan(src)
    records.sort(key=lambda r: r.gdb_id)
    return records, problems
