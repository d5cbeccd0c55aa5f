"""HDF5 trajectory files: atomic writing, shard checks, virtual merge, validated reading.

File layout (``format_version`` 1, one file per split; DESIGN section 2):

=====================  ==============================  =========================================
dataset                shape                           meaning
=====================  ==============================  =========================================
``positions``          [n_sims, n_frames, n_bodies, dim]  positions at steps sample_freq, 2 sample_freq, ...
``velocities``         [n_sims, n_frames, n_bodies, dim]  velocities at the same steps
``charges``            [n_sims, n_bodies]              charges (+-1)
``energy``             [n_sims, n_frames]              total energy ``kinetic + potential``
``kinetic_energy``     [n_sims, n_frames]              ``0.5 sum_i |v_i|^2`` (unit masses)
``potential_energy``   [n_sims, n_frames]              ``sum_{i<j} q_i q_j / r_ij``
=====================  ==============================  =========================================

All float64, chunked one simulation per chunk, fill value NaN.  Attributes: ``format_version``,
``dt``, ``sample_freq``, ``n_steps``, ``n_frames``, ``box_size`` (0 = no walls), ``loc_std``,
``vel_norm``, ``seed``, ``split``, ``n_bodies``, ``dim``, ``n_sims``, ``n_sims_total``,
``sim_start``, ``sim_stop`` (the split's simulations this file holds), ``shard_index``,
``n_shards``, ``config`` (the full config as YAML) and ``complete`` (written last; a file
without it is an interrupted write).  A merged file holds HDF5 virtual datasets over its shard
files (names relative to its own directory, listed in ``shard_files``) and ``virtual=True``.
"""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import h5py
import numpy as np

from invattn.files import commit, temp_path, write_error

__all__ = ["FORMAT_VERSION", "DATASETS", "IDENTITY_ATTRS", "TrajectoryWriter", "estimated_file_bytes",
           "read_attributes", "open_trajectories", "read_trajectories", "shard_problem",
           "write_merged"]

FORMAT_VERSION = 1
DATASETS = ("positions", "velocities", "charges", "energy", "kinetic_energy", "potential_energy")
#: Attributes that say which simulations a file holds; shards and merged files must agree on them.
IDENTITY_ATTRS = ("format_version", "seed", "split", "n_bodies", "dim", "n_steps", "sample_freq",
                  "dt", "box_size", "loc_std", "vel_norm", "n_sims_total", "n_frames")


def _shapes(n_sims: int, n_frames: int, n_bodies: int, dim: int) -> dict[str, tuple]:
    state = (n_sims, n_frames, n_bodies, dim)
    frames = (n_sims, n_frames)
    return {"positions": state, "velocities": state, "charges": (n_sims, n_bodies),
            "energy": frames, "kinetic_energy": frames, "potential_energy": frames}


def estimated_file_bytes(n_sims: int, n_frames: int, n_bodies: int, dim: int) -> int:
    """An upper bound of the size of a trajectory file: the float64 data plus 5% and 64 KiB
    for HDF5's chunk index and attributes (measured: about 3% and 7 KiB)."""
    raw = 8 * sum(math.prod(s) for s in _shapes(n_sims, n_frames, n_bodies, dim).values())
    return int(raw * 1.05) + (1 << 16)


def _py(value):
    """HDF5 attribute -> plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


class TrajectoryWriter:
    """Write one trajectory file atomically: a temporary file, renamed when complete.

    Use as a context manager; call :meth:`write` for each block and :meth:`commit` at the
    end.  Leaving the block without ``commit`` (an exception, Ctrl-C) deletes the temporary
    file, so ``final`` is either absent, the previous file, or complete.

    Parameters
    ----------
    final : Path
        Destination file.
    n_sims, n_frames, n_bodies, dim : int
        Array sizes (see the module docstring).
    attrs : dict
        File attributes (``complete`` is added by :meth:`commit`).
    replace : bool
        Allow replacing an existing ``final`` at commit time.
    """

    def __init__(self, final, n_sims: int, n_frames: int, n_bodies: int, dim: int, attrs: dict,
                 replace: bool = False):
        self.final = Path(final)
        self.tmp = temp_path(self.final)
        self.shapes = _shapes(n_sims, n_frames, n_bodies, dim)
        self.attrs = dict(attrs)
        self.replace = replace
        self._file: h5py.File | None = None

    def __enter__(self) -> "TrajectoryWriter":
        try:
            with h5py.File(self.tmp, "w") as f:
                for name, shape in self.shapes.items():
                    # One simulation per chunk: readers fetch whole simulations; NaN marks unwritten data.
                    chunks = (1,) + shape[1:] if shape[0] else None
                    f.create_dataset(name, shape=shape, dtype="f8", chunks=chunks, fillvalue=np.nan)
                for key, value in self.attrs.items():
                    f.attrs[key] = value
                f.attrs["complete"] = False
            self._reserve()
            self._file = h5py.File(self.tmp, "r+")
        except BaseException as exc:
            self.tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not str(exc).startswith("cannot write"):
                raise write_error(self.final, exc) from None
            raise
        return self

    def _reserve(self) -> None:
        """Allocate the whole file's disk space now, so that a full disk (or a file size limit)
        is a clean error here, before any simulation, and never a failed write inside HDF5,
        which leaves the library unable to close the file (tracebacks, then a segmentation
        fault at exit).  HDF5 truncates the file to its real size when it is closed."""
        n_sims, n_frames, n_bodies, dim = self.shapes["positions"]
        size = estimated_file_bytes(n_sims, n_frames, n_bodies, dim)
        fd = os.open(self.tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise write_error(self.final, exc) from None
        finally:
            os.close(fd)

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write simulations ``start .. start + len`` of every dataset in ``arrays``."""
        try:
            for name, values in arrays.items():
                self._file[name][start:start + len(values)] = values
        except OSError as exc:
            raise write_error(self.final, exc) from None

    def commit(self) -> Path:
        """Mark complete (the last attribute written), close and rename onto ``final``."""
        try:
            self._file.attrs["complete"] = True
            self._file.close()
        except (OSError, RuntimeError) as exc:
            raise write_error(self.final, exc if isinstance(exc, OSError) else OSError(str(exc))) from None
        self._file = None
        if not self.replace and self.final.exists():
            self.tmp.unlink()
            raise FileExistsError(f"{self.final} appeared while it was being written; "
                                  f"pass overwrite=true to replace it")
        try:
            return commit(self.tmp, self.final)
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            raise write_error(self.final, exc) from None

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, RuntimeError):  # the write failed already; that error is raised
                pass
            self._file = None
            self.tmp.unlink(missing_ok=True)


def read_attributes(path) -> dict:
    """Attributes of a trajectory file as plain Python values (no validation)."""
    with h5py.File(path, "r") as f:
        return {k: _py(v) for k, v in f.attrs.items()}


def shard_problem(path, expected: dict) -> str | None:
    """Why the existing file ``path`` cannot be reused as a finished shard (None if it can).

    A reusable shard is readable, has ``complete=True``, the ``expected`` attributes and
    the dataset shapes those attributes imply.
    """
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _py(v) for k, v in f.attrs.items()}
            if attrs.get("complete") is not True:
                return "no complete=True attribute (interrupted write)"
            for key, want in expected.items():
                if attrs.get(key) != want:
                    return f"attribute {key}={attrs.get(key)!r}, expected {want!r}"
            shapes = _shapes(attrs["sim_stop"] - attrs["sim_start"], attrs["n_frames"],
                             attrs["n_bodies"], attrs["dim"])
            for name, shape in shapes.items():
                if name not in f or f[name].shape != shape:
                    return f"dataset {name} missing or not of shape {shape}"
    except (OSError, KeyError, TypeError) as exc:
        return f"unreadable ({exc})"
    return None


def _validate_sources(f: h5py.File, path: Path, attrs: dict) -> None:
    """Every source shard of a virtual file exists, is complete and holds the mapped range."""
    seen: dict[str, tuple[int, int]] = {}
    for name in DATASETS:
        ds = f[name]
        if not ds.is_virtual:
            continue
        for vmap in ds.virtual_sources():
            (lo, *_), (hi, *_) = vmap.vspace.get_select_bounds()
            seen.setdefault(vmap.file_name, (lo, hi + 1))
    for fname, (start, stop) in seen.items():
        src = Path(fname) if os.path.isabs(fname) else path.parent / fname
        if not src.is_file():
            raise FileNotFoundError(
                f"{path}: source shard {src} is missing (simulations {start}..{stop - 1} of "
                f"split {attrs.get('split')!r} would read as NaN); regenerate it with "
                f"`invattn simulate ... n_shards={attrs.get('n_shards')} shard_index=<i>` and merge again")
        expected = {k: attrs[k] for k in IDENTITY_ATTRS if k in attrs}
        expected.update(sim_start=start, sim_stop=stop)
        problem = shard_problem(src, expected)
        if problem:
            raise ValueError(f"{path}: source shard {src} is not usable: {problem}")


def open_trajectories(path) -> h5py.File:
    """Open a trajectory file for reading after validating it (and every shard it maps).

    Parameters
    ----------
    path : str or Path
        ``train.h5`` / ``test.h5`` / a shard file written by ``invattn simulate`` or
        ``invattn simulate-merge``.

    Returns
    -------
    h5py.File
        Open in read mode; the caller closes it.

    Raises
    ------
    FileNotFoundError
        ``path`` is missing, or (merged file) a source shard is missing -- h5py would
        otherwise silently read NaN fill values for it (DESIGN section 8).
    ValueError
        Not an HDF5 file, unknown ``format_version``, an interrupted write (no
        ``complete=True``), missing datasets, or a source shard that is incomplete or
        belongs to another dataset.  The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file: {exc}") from exc
    try:
        attrs = {k: _py(v) for k, v in f.attrs.items()}
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {version!r} is not supported "
                             f"(this simulator reads version {FORMAT_VERSION})")
        if attrs.get("complete") is not True:
            raise ValueError(f"{path} is incomplete (no complete=True attribute): an interrupted "
                             f"write; generate it again")
        missing = [name for name in DATASETS if name not in f]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {', '.join(missing)}")
        _validate_sources(f, path, attrs)
    except BaseException:
        f.close()
        raise
    return f


def read_trajectories(path, sims: slice | None = None) -> dict:
    """Read a trajectory file into memory (validated by :func:`open_trajectories`).

    Parameters
    ----------
    path : str or Path
        Trajectory file.
    sims : slice, optional
        Simulations to read (default all).

    Returns
    -------
    dict
        ``positions``, ``velocities`` float64 ``[n_sims, n_frames, n_bodies, dim]``,
        ``charges`` ``[n_sims, n_bodies]``, ``energy``, ``kinetic_energy``,
        ``potential_energy`` ``[n_sims, n_frames]``, and ``attrs`` (dict of the file
        attributes as Python values; ``box_size`` 0 means no walls).

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`open_trajectories`; also ValueError if positions, velocities or charges
        hold NaN (unwritten data) or inf; the message names the file, dataset and index.
    """
    sel = slice(None) if sims is None else sims
    with open_trajectories(path) as f:
        out = {name: f[name][sel] for name in DATASETS}
        out["attrs"] = {k: _py(v) for k, v in f.attrs.items()}
    # Index in the file of the selection's first simulation (None if not a plain slice).
    offset = (sel.start or 0) if sel.step in (None, 1) and (sel.start or 0) >= 0 else None
    for name in ("positions", "velocities", "charges"):
        _check_finite(path, name, out[name], offset)
    return out


def _check_finite(path, name: str, values: np.ndarray, offset: int | None) -> None:
    """Refuse NaN/inf in a dataset, naming the file, dataset and index of the first one.

    Training would otherwise fail much later with a non-finite loss that looks like a
    learning-rate problem.
    """
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    sim = f"simulation {index[0] + offset}" if offset is not None else f"simulation {index[0]} of the selection"
    where = ", ".join([sim] + [f"{label} {i}" for label, i in zip(("frame", "body", "component")
                                                                  if values.ndim == 4 else ("body",), index[1:])])
    why = "data that were never written or a corrupt file" if np.isnan(values[index]) else "a corrupt file"
    raise ValueError(f"{path}: {name} holds {float(values[index])} at {where} ({int(bad.sum())} non-finite "
                     f"value(s): {why}); regenerate it with `invattn simulate`")


def write_merged(final, shards: list[tuple[Path, int, int]], n_sims: int, n_frames: int,
                 n_bodies: int, dim: int, attrs: dict, replace: bool = False) -> Path:
    """Join shard files into ``final`` with HDF5 virtual datasets (fill value NaN).

    ``shards`` lists ``(path, sim_start, sim_stop)``; the paths must be in ``final``'s
    directory and are stored by name, so the folder can be moved as a whole.  Written to a
    temporary file and renamed.
    """
    final = Path(final)
    shapes = _shapes(n_sims, n_frames, n_bodies, dim)
    layouts = {name: h5py.VirtualLayout(shape=shape, dtype="f8") for name, shape in shapes.items()}
    for src, start, stop in shards:
        if stop == start:
            continue
        for name, shape in shapes.items():
            layouts[name][start:stop] = h5py.VirtualSource(
                Path(src).name, name, shape=(stop - start,) + shape[1:])
    tmp = temp_path(final)
    try:
        try:
            with h5py.File(tmp, "w") as f:
                for name, layout in layouts.items():
                    f.create_virtual_dataset(name, layout, fillvalue=np.nan)
                for key, value in attrs.items():
                    f.attrs[key] = value
                f.attrs["virtual"] = True
                f.attrs["shard_files"] = [Path(s).name for s, _, _ in shards]
                f.attrs["complete"] = True
        except OSError as exc:
            raise write_error(final, exc) from None
        if not replace and final.exists():
            raise FileExistsError(f"{final} already exists; pass overwrite=true to replace it")
        commit(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
