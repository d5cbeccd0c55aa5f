"""Datasets on disk: settings from the config, whole files, shards and their merge.

A split (``train`` or ``test``) of ``n`` simulations is either one file ``DIR/<split>.h5`` or
``n_shards`` files ``DIR/<split>.shard-IIIII-of-KKKKK.h5`` holding contiguous index ranges
(shard i: ``i*n//K .. (i+1)*n//K - 1``), later joined into ``DIR/<split>.h5`` by a virtual
dataset.  Simulation k is drawn from ``(seed, split, k)`` and integrated independently, so
every layout gives bitwise the same arrays.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from invattn.checks import check_bool, check_folder, check_int, is_number
from invattn.files import TMP_MARK
from invattn.guard import interrupt_between_steps
from invattn.simulator import io
from invattn.simulator.dynamics import NonFiniteSimulationError, n_frames_for, simulate
from invattn.simulator.initial import initial_conditions

__all__ = ["SPLITS", "SimulationSettings", "shard_name", "shard_range", "generate", "merge"]

SPLITS = ("train", "test")
_KEYS = ("preset", "out", "seed", "n_train", "n_test", "n_bodies", "dim", "n_steps", "sample_freq",
         "dt", "box_size", "loc_std", "vel_norm", "n_shards", "shard_index", "block_size",
         "num_threads", "overwrite", "progress")


def shard_name(split: str, index: int, n_shards: int) -> str:
    """File name of shard ``index`` of ``n_shards`` (e.g. ``train.shard-00002-of-00008.h5``)."""
    return f"{split}.shard-{index:05d}-of-{n_shards:05d}.h5"


def shard_range(n_sims: int, index: int, n_shards: int) -> tuple[int, int]:
    """Simulations ``[start, stop)`` of shard ``index``: contiguous, sizes differ by at most 1."""
    return index * n_sims // n_shards, (index + 1) * n_sims // n_shards


def _int(cfg: dict, key: str, minimum: int | None = None, allow_none: bool = False):
    value = cfg[key]
    if value is None and allow_none:
        return None
    value = check_int(f"config key {key}", value)
    if minimum is not None and value < minimum:
        raise ValueError(f"config key {key} must be >= {minimum}, got {value}")
    return int(value)


def _float(cfg: dict, key: str, positive: bool):
    value = cfg[key]
    if not is_number(value, finite=True):
        raise ValueError(f"config key {key} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"config key {key} must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


@dataclass(frozen=True)
class SimulationSettings:
    """Validated ``invattn simulate`` settings (keys of ``configs/simulate.yaml``)."""

    out: Path
    seed: int
    n_train: int
    n_test: int
    n_bodies: int
    dim: int
    n_steps: int
    sample_freq: int
    dt: float
    box_size: float          # 0.0 = no walls
    loc_std: float
    vel_norm: float
    n_shards: int
    shard_index: int | None
    block_size: int
    num_threads: int | None
    overwrite: bool
    progress: bool | None    # None = auto
    config_yaml: str

    @property
    def n_frames(self) -> int:
        return self.n_steps // self.sample_freq - 1

    @classmethod
    def from_config(cls, cfg) -> "SimulationSettings":
        """Check every key and value; raise ValueError naming the key that is wrong."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            text = OmegaConf.to_yaml(cfg, resolve=True)
            cfg = OmegaConf.to_container(cfg, resolve=True)
        else:
            text = OmegaConf.to_yaml(OmegaConf.create(dict(cfg)))
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown config key(s) for simulate: {', '.join(unknown)} "
                             f"(known: {', '.join(_KEYS)})")
        missing = [k for k in _KEYS if k not in cfg and k != "preset"]
        if missing:
            raise ValueError(f"missing config key(s) for simulate: {', '.join(missing)}")
        if not isinstance(cfg["out"], str) or not cfg["out"].strip():
            raise ValueError(f"config key out must be a directory path, got {cfg['out']!r}")
        check_folder("out", cfg["out"])  # not at the first write, after the compile and the size checks
        n_steps, sample_freq = _int(cfg, "n_steps", 1), _int(cfg, "sample_freq", 1)
        try:
            n_frames_for(n_steps, sample_freq)
        except ValueError as exc:
            raise ValueError(f"config keys n_steps/sample_freq: {exc}") from None
        box = 0.0 if cfg["box_size"] is None else _float(cfg, "box_size", positive=False)
        n_shards = _int(cfg, "n_shards", 1)
        shard_index = _int(cfg, "shard_index", 0, allow_none=True)
        if shard_index is not None and shard_index >= n_shards:
            raise ValueError(f"config key shard_index={shard_index} is out of range for "
                             f"n_shards={n_shards} (0..{n_shards - 1})")
        num_threads = _int(cfg, "num_threads", 1, allow_none=True)
        if num_threads is not None:
            import numba
            if num_threads > numba.config.NUMBA_NUM_THREADS:
                raise ValueError(f"config key num_threads={num_threads} exceeds the "
                                 f"{numba.config.NUMBA_NUM_THREADS} Numba threads available "
                                 f"(set NUMBA_NUM_THREADS to raise the limit)")
        check_bool("config key overwrite", cfg["overwrite"])
        progress = cfg["progress"]
        if progress not in ("auto", True, False):
            raise ValueError(f"config key progress must be auto, true or false, got {progress!r}")
        settings = cls(
            out=Path(cfg["out"]), seed=_int(cfg, "seed", 0), n_train=_int(cfg, "n_train", 0),
            n_test=_int(cfg, "n_test", 0), n_bodies=_int(cfg, "n_bodies", 2),
            dim=_int(cfg, "dim", 1), n_steps=n_steps, sample_freq=sample_freq,
            dt=_float(cfg, "dt", positive=True), box_size=box,
            loc_std=_float(cfg, "loc_std", positive=True),
            vel_norm=_float(cfg, "vel_norm", positive=False), n_shards=n_shards,
            shard_index=shard_index, block_size=_int(cfg, "block_size", 1),
            num_threads=num_threads, overwrite=cfg["overwrite"],
            progress=None if progress == "auto" else progress, config_yaml=text)
        if not settings.splits():
            raise ValueError("config keys n_train and n_test are both 0: nothing to simulate")
        return settings

    def n_sims(self, split: str) -> int:
        return {"train": self.n_train, "test": self.n_test}[split]

    def splits(self) -> list[str]:
        """Splits with at least one simulation."""
        return [s for s in SPLITS if self.n_sims(s) > 0]

    def identity(self, split: str) -> dict:
        """Attributes that identify the simulations of ``split`` (see :data:`io.IDENTITY_ATTRS`)."""
        return {"format_version": io.FORMAT_VERSION, "seed": self.seed, "split": split,
                "n_bodies": self.n_bodies, "dim": self.dim, "n_steps": self.n_steps,
                "sample_freq": self.sample_freq, "dt": self.dt, "box_size": self.box_size,
                "loc_std": self.loc_std, "vel_norm": self.vel_norm,
                "n_sims_total": self.n_sims(split), "n_frames": self.n_frames}

    def file_identity(self, split: str, shard: int, start: int, stop: int) -> dict:
        """:meth:`identity` plus the simulation range and shard of one output file."""
        return dict(self.identity(split), sim_start=start, sim_stop=stop, shard_index=shard,
                    n_shards=self.n_shards)

    def targets(self, split: str) -> list[tuple[Path, int, int, int]]:
        """``(path, shard_index, start, stop)`` of the files this run must produce for ``split``."""
        n = self.n_sims(split)
        if self.n_shards == 1:
            return [(self.out / f"{split}.h5", 0, 0, n)]
        indices = range(self.n_shards) if self.shard_index is None else [self.shard_index]
        return [(self.out / shard_name(split, i, self.n_shards), i, *shard_range(n, i, self.n_shards))
                for i in indices]


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n_bytes < 1024 or unit == "PiB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def _available_memory() -> int | None:
    """Free memory (psutil's ``available``), capped by this process's address-space limit."""
    import resource

    limits = []
    try:
        import psutil  # installed with ray[default]

        limits.append(int(psutil.virtual_memory().available))
    except ImportError:
        pass
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        limits.append(int(soft))
    return min(limits) if limits else None


def check_resources(settings: SimulationSettings, todo) -> None:
    """Refuse, before any work, a run whose files exceed the free disk space of ``out`` or
    whose simulation blocks exceed the available memory.

    ``todo`` lists ``(split, path, shard, start, stop)`` of the files to write.  Raises
    OSError with both figures and what to change.
    """
    import shutil

    if not todo:
        return
    f, b, d = settings.n_frames, settings.n_bodies, settings.dim
    need = sum(io.estimated_file_bytes(stop - start, f, b, d) for *_, start, stop in todo)
    free = shutil.disk_usage(settings.out).free
    if need > free:
        raise OSError(f"simulate would write about {_size(need)} to {settings.out} "
                      f"({len(todo)} file(s)) but only {_size(free)} is free there; "
                      f"lower n_train/n_test or choose another out=")
    # Per simulation in a block: positions, velocities, energies from the kernel, the total
    # energy and the initial state; twice that for the copies h5py and numpy make.
    per_sim = 2 * 8 * (2 * f * b * d + 4 * f + 3 * b * d + b)
    block = min(settings.block_size, max(stop - start for *_, start, stop in todo))
    available = _available_memory()
    if available is not None and block * per_sim > available:
        if per_sim > available:
            raise ValueError(f"one simulation of n_bodies={b} x {f} frames needs about "
                              f"{_size(per_sim)} of memory but only {_size(available)} is available; "
                              f"lower n_bodies or n_steps")
        raise ValueError(f"a block of {block} simulations needs about {_size(block * per_sim)} of "
                          f"memory but only {_size(available)} is available; lower block_size "
                          f"(at most {available // per_sim})")


def _progress_enabled(settings: SimulationSettings) -> bool:
    return sys.stderr.isatty() if settings.progress is None else settings.progress


def _write_file(settings: SimulationSettings, split: str, path: Path, shard: int,
                start: int, stop: int) -> Path:
    """Simulate ``start .. stop-1`` of ``split`` in blocks into ``path`` (atomically)."""
    from tqdm import tqdm

    attrs = settings.file_identity(split, shard, start, stop)
    attrs.update(n_sims=stop - start, frame_interval=settings.dt * settings.sample_freq,
                 config=settings.config_yaml)
    label = split if settings.n_shards == 1 else f"{split} {shard + 1}/{settings.n_shards}"
    bar = tqdm(total=stop - start, unit="sim", desc=label, disable=not _progress_enabled(settings))
    writer = io.TrajectoryWriter(path, stop - start, settings.n_frames, settings.n_bodies,
                                 settings.dim, attrs, replace=settings.n_shards > 1 or settings.overwrite)
    with bar, writer, interrupt_between_steps() as check_interrupt:
        for lo in range(start, stop, settings.block_size):
            hi = min(lo + settings.block_size, stop)
            x0, v0, q = initial_conditions(settings.seed, split, lo, hi, settings.n_bodies,
                                           settings.dim, settings.loc_std, settings.vel_norm)
            try:
                x, v, ke, pe = simulate(x0, v0, q, n_steps=settings.n_steps,
                                        sample_freq=settings.sample_freq, dt=settings.dt,
                                        box_size=settings.box_size, return_energy=True)
            except NonFiniteSimulationError as exc:
                idx = [lo + i for i in exc.indices]
                raise NonFiniteSimulationError(
                    f"{split} simulation(s) {', '.join(map(str, idx[:10]))} (seed {settings.seed}) "
                    f"produced non-finite values; nothing was written to {path}", idx) from None
            except ValueError as exc:
                raise ValueError(f"{split} simulations {lo}..{hi - 1} (seed {settings.seed}, "
                                 f"loc_std {settings.loc_std}): {exc}") from None
            writer.write(lo - start, {"positions": x, "velocities": v, "charges": q,
                                      "energy": ke + pe, "kinetic_energy": ke,
                                      "potential_energy": pe})
            bar.update(hi - lo)
            check_interrupt()  # Ctrl-C: stop here; the writer removes its temporary file
        return writer.commit()


def generate(settings: SimulationSettings, log=print) -> list[Path]:
    """Write the files selected by ``settings`` (both splits; all shards or one).

    A file (whole or shard) that already holds exactly this dataset is kept, so a re-run
    resumes or does nothing; a complete file of another dataset is replaced only with
    ``overwrite``; an interrupted shard is computed again.

    Raises
    ------
    FileExistsError
        ``DIR/<split>.h5`` holds another dataset and ``overwrite`` is false (checked before
        any work).
    ValueError
        Bad settings or inputs; NonFiniteSimulationError names broken simulations.
    """
    import numba

    threads = numba.get_num_threads()
    if settings.num_threads is not None:
        numba.set_num_threads(settings.num_threads)
    try:
        return _generate(settings, log)
    finally:
        numba.set_num_threads(threads)


def _shard_states(settings: SimulationSettings, plan) -> dict[Path, str | None]:
    """For each existing shard file of ``plan``: None (complete, reusable) or why not.

    Raises FileExistsError (before any work) when a complete shard belongs to another
    dataset (seed, sizes, physics or range differ): like a whole file, a finished result is
    replaced only with ``overwrite=true``.  Interrupted or unreadable shards are redone.
    """
    states, foreign = {}, []
    for split, path, shard, start, stop in plan:
        if not path.exists():
            continue
        problem = io.shard_problem(path, settings.file_identity(split, shard, start, stop))
        if problem is not None and io.shard_problem(path, {}) is None:
            foreign.append(f"{path} ({problem})")
        states[path] = problem
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise FileExistsError(f"{foreign[0]}{more}: complete shard(s) of another dataset; "
                              f"pass overwrite=true to replace them or choose another out=")
    return states


def _whole_file_states(settings: SimulationSettings, plan) -> dict[Path, None]:
    """Existing whole files that already hold exactly this dataset are kept (a re-run, such as
    ``invattn simulate preset=demo`` after ``make demo``, succeeds without work).

    Raises FileExistsError (before any work) for an existing file of another dataset, or one
    that is unreadable: it is replaced only with ``overwrite=true``.
    """
    states = {}
    for split, path, shard, start, stop in plan:
        if not path.exists():
            continue
        problem = io.shard_problem(path, settings.file_identity(split, shard, start, stop))
        if problem is not None:
            raise FileExistsError(f"{path} already exists; pass overwrite=true to replace it "
                                  f"(it holds another dataset: {problem})")
        states[path] = None
    return states


def _generate(settings: SimulationSettings, log) -> list[Path]:
    settings.out.mkdir(parents=True, exist_ok=True)
    plan = [(split, *t) for split in settings.splits() for t in settings.targets(split)]
    if settings.overwrite:
        states = {}
    elif settings.n_shards == 1:
        states = _whole_file_states(settings, plan)
    else:
        states = _shard_states(settings, plan)
    todo = [p for p in plan if not (p[1] in states and states[p[1]] is None)]
    check_resources(settings, todo)
    written = []
    for split, path, shard, start, stop in plan:
        if path in states:
            if states[path] is None:
                log(f"{path}: complete, skipped" if settings.n_shards > 1 else
                    f"{path}: already holds this dataset (seed {settings.seed}, {stop - start} "
                    f"simulations), kept; overwrite=true simulates it again")
                written.append(path)
                continue
            log(f"{path}: recomputing ({states[path]})")
        t0 = time.perf_counter()
        _write_file(settings, split, path, shard, start, stop)
        log(f"{path}: {stop - start} simulations x {settings.n_frames} frames "
            f"in {time.perf_counter() - t0:.2f} s")
        written.append(path)
    return written


def _merged_config(text: str) -> str:
    """The shards' config with ``shard_index`` cleared: it describes the whole split."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(text)
    cfg.shard_index = None
    return OmegaConf.to_yaml(cfg)


def merge(out, n_shards: int, overwrite: bool = False, log=print) -> list[Path]:
    """Join ``DIR/<split>.shard-*-of-K.h5`` into ``DIR/<split>.h5`` (virtual datasets).

    The shards' own attributes define the dataset: they must all be complete, agree on
    their identity (seed, sizes, physics) and cover ``0 .. n_sims_total - 1``.  Splits with
    no shard file at all are skipped.

    Raises
    ------
    FileNotFoundError
        No shard of any split, or some shards of a split are missing (all are named).
    ValueError
        An incomplete or inconsistent shard (named), or ``n_shards < 2``.
    FileExistsError
        ``DIR/<split>.h5`` exists and ``overwrite`` is false.
    """
    out = Path(out)
    if n_shards < 2:
        raise ValueError(f"config key n_shards must be >= 2 to merge shards, got {n_shards}")
    plans = []
    for split in SPLITS:
        paths = [out / shard_name(split, i, n_shards) for i in range(n_shards)]
        present = [p for p in paths if p.exists()]
        if not present:
            continue
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise FileNotFoundError(f"cannot merge {split} in {out}: {len(missing)} of {n_shards} "
                                    f"shard(s) missing: {shown}")
        problem = io.shard_problem(paths[0], {})
        if problem:
            raise ValueError(f"cannot merge {split}: shard {paths[0]} is not usable: {problem}")
        first = io.read_attributes(paths[0])
        identity = {k: first[k] for k in io.IDENTITY_ATTRS}
        shards = []
        for i, path in enumerate(paths):
            start, stop = shard_range(identity["n_sims_total"], i, n_shards)
            expected = dict(identity, sim_start=start, sim_stop=stop, shard_index=i, n_shards=n_shards)
            problem = io.shard_problem(path, expected)
            if problem:
                raise ValueError(f"cannot merge {split}: shard {path} is not usable: {problem}")
            shards.append((path, start, stop))
        target = out / f"{split}.h5"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=true to replace it")
        plans.append((split, target, identity, first, shards))
    if not plans:
        found = sorted({int(m.group(1)) for p in Path(out).glob("*.shard-*-of-*.h5")
                        if (m := re.search(r"\.shard-\d+-of-(\d+)\.h5$", p.name))})
        hint = f" (it holds shards of n_shards={', '.join(map(str, found))})" if found else ""
        raise FileNotFoundError(f"no shard files *.shard-*-of-{n_shards:05d}.h5 in {out}{hint}")
    written = []
    for split, target, identity, first, shards in plans:
        attrs = dict(identity, n_sims=identity["n_sims_total"], sim_start=0,
                     sim_stop=identity["n_sims_total"], shard_index=0, n_shards=n_shards,
                     frame_interval=first["frame_interval"], config=_merged_config(first["config"]))
        io.write_merged(target, shards, identity["n_sims_total"], identity["n_frames"],
                        identity["n_bodies"], identity["dim"], attrs, replace=overwrite)
        log(f"{target}: {identity['n_sims_total']} simulations from {n_shards} shards")
        written.append(target)
    stale = sorted(out.glob(f".*.shard-*.h5{TMP_MARK}*"))
    if stale:
        log(f"note: {len(stale)} temporary file(s) of interrupted shard attempts remain in {out} "
            f"(e.g. {stale[0].name}); delete them once no simulate job is running")
    return written
