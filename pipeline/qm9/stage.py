"""The QM9 preprocessing stage: source -> HDF5 shards + ``manifest.json`` (DESIGN sections 5-7).

Driver steps:

1. scan the source (ids from file names / the ``Index`` column; nothing parsed yet),
2. drop the uncharacterized ids (default) and duplicate ids (reported),
3. assign splits from the seeded permutation of the sorted ids,
4. plan shards of ``shard_size`` consecutive ids; each gets a ``plan_hash`` over the source
   identity, its ids, their splits and the settings that change shard content,
5. reuse every shard whose file is complete and carries the same ``plan_hash``; compute the
   rest as a Dask bag (one partition = one shard: parse, perceive bonds, write atomically),
6. write ``manifest.json`` atomically with the shards, counts, source, config and summary.

Counts hold at every stage: ``found = excluded_uncharacterized + parsed`` and
``parsed = written + skipped``; ``bond_perception_failed`` counts written molecules whose bonds
are flagged.  ``cluster=serial`` runs the same partition functions in a plain loop.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from invattn.files import write_atomic
from invattn.pipeline.qm9.partition import ShardTask, load_partition, process_partition
from invattn.pipeline.qm9.shards import (MANIFEST_FORMAT, MANIFEST_NAME, SHARD_FORMAT_VERSION, is_temp_name, shard_attrs,
                                 shard_is_valid, shard_name)
from invattn.pipeline.qm9.sources import Source, load_excluded_ids, resolve_source, scan_source
from invattn.pipeline.qm9.split import SPLIT_NAMES, assign_splits, split_sizes

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "preprocess", "plan"]



def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _settings(cfg: DictConfig, excluded: set[int]) -> dict:
    """The config values that change shard content (part of every plan hash)."""
    return {"format_version": SHARD_FORMAT_VERSION, "shard_size": int(cfg.shard_size),
            "exclude_uncharacterized": bool(cfg.exclude.uncharacterized),
            "excluded_ids_hash": _hash(sorted(excluded)), "n_excluded_ids": len(excluded),
            "split": OmegaConf.to_container(cfg.split, resolve=True),
            "bonds": OmegaConf.to_container(cfg.bonds, resolve=True)}


def plan(cfg: DictConfig, src: Source, log=print) -> dict:
    """Scan ``src`` and plan the shards (steps 1-4 of the module docstring).

    Returns a dict with ``tasks`` (list of :class:`ShardTask`), ``counts``, ``skipped``,
    ``settings``, ``run_hash`` and ``split_planned``.
    """
    if int(cfg.shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {cfg.shard_size}")
    records, skipped = scan_source(src)
    found = len(records) + len(skipped)
    excluded = load_excluded_ids(cfg.exclude.ids_file) if cfg.exclude.uncharacterized else set()
    kept, seen, n_excluded = [], {}, 0
    for rec in records:
        if rec.gdb_id in excluded:
            n_excluded += 1
        elif rec.gdb_id in seen:
            skipped.append({"name": rec.name, "line": rec.line,
                            "reason": f"duplicate gdb id {rec.gdb_id} (first in {seen[rec.gdb_id]})"})
        else:
            seen[rec.gdb_id] = rec.name
            kept.append(rec)
    split_kw = {"n_train_full": int(cfg.split.n_train_full), "n_reference": int(cfg.split.n_reference),
                "test_fraction": float(cfg.split.test_fraction)}
    codes = assign_splits([r.gdb_id for r in kept], int(cfg.split.seed), **split_kw)
    settings = _settings(cfg, excluded)
    fingerprint = src.fingerprint()
    size = int(cfg.shard_size)
    tasks = []
    for index, start in enumerate(range(0, len(kept), size)):
        recs, splits = kept[start:start + size], [int(c) for c in codes[start:start + size]]
        plan_hash = _hash({"settings": settings, "source": fingerprint, "shard": index,
                           "ids": [r.gdb_id for r in recs], "sizes": [r.size for r in recs],
                           "splits": splits})
        tasks.append(ShardTask(index, plan_hash, src.kind, tuple(src.paths),
                               tuple(tuple(h) for h in src.csv_headers), tuple(recs), tuple(splits)))
    counts = {"found": found, "excluded_uncharacterized": n_excluded, "parsed": found - n_excluded,
              "skipped_before_parsing": len(skipped)}
    return {"tasks": tasks, "counts": counts, "skipped": skipped, "settings": settings,
            "source": {"description": src.description, **fingerprint},
            "run_hash": _hash([settings, fingerprint, [t.plan_hash for t in tasks]]),
            "split_planned": split_sizes(len(kept), **split_kw)}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every leaf of two nested dicts that differs."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _check_out_dir(out: Path, p: dict, overwrite: bool) -> dict | None:
    """Refuse (unless ``overwrite``) an ``out`` holding shards of another source or settings,
    naming what changed: the source, or the settings (``shard_size: 2000 -> 500``)."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{path}: existing manifest is not valid JSON; move it away or use another out") from None
    if old.get("run_hash") != p["run_hash"] and not overwrite:
        as_json = lambda obj: json.loads(json.dumps(obj, default=str))  # noqa: E731  (as stored)
        changed = _differences(old.get("settings") or {}, as_json(p["settings"]))
        old_src, new_src = old.get("source") or {}, as_json(p["source"])
        if old_src.get("description") != new_src.get("description"):
            changed.insert(0, f"source: {old_src.get('description')!r} -> {new_src.get('description')!r}")
        elif _differences(old_src, new_src):
            changed.insert(0, f"source {new_src.get('description')!r} changed on disk "
                              f"({'; '.join(_differences(old_src, new_src)[:2])})")
        what = "; ".join(changed) if changed else "the planned shards differ"
        raise FileExistsError(
            f"{out} holds QM9 shards made with other settings ({what}); pass overwrite=true "
            f"to replace them, or choose another out=")
    return old


def _clean(out: Path, keep: set[str], log) -> None:
    for entry in out.iterdir():
        if is_temp_name(entry.name):  # left by a killed attempt; never a finished shard
            entry.unlink(missing_ok=True)
            log(f"removed stale temporary file {entry.name}")
        elif entry.name.startswith("shard_") and entry.name.endswith(".h5") and entry.name not in keep:
            entry.unlink()
            log(f"removed {entry.name}: not part of the current plan")


def _run_serial(tasks, src, out, bond_options, log, progress):
    from tqdm import tqdm

    results, errors = [], []
    for task in tqdm(tasks, desc="shards", disable=not progress):
        texts = [src.texts[r.gdb_id] for r in task.records] if src.kind == "xyz_tar" else None
        try:
            results.extend(process_partition(load_partition(task, texts), str(out), bond_options))
        except Exception as exc:  # same policy as on Dask: report, keep the other shards
            errors.append({"shard": task.index, "error": f"{type(exc).__name__}: {exc}"})
    return results, errors


def _run_dask(cfg, tasks, src, out, bond_options, log, progress):
    import dask
    import dask.bag as db
    from distributed import as_completed
    from tqdm import tqdm

    from invattn.pipeline.qm9.cluster import dask_client

    results, errors = [], []
    t0 = time.perf_counter()
    with dask_client(cfg, log=log) as client:
        log(f"dask: cluster ready in {time.perf_counter() - t0:.1f} s")
        parts = []
        for task in tasks:
            texts = None
            if src.kind == "xyz_tar":  # the driver holds the archive's text: ship it to the workers
                texts = client.scatter([[src.texts[r.gdb_id] for r in task.records]])[0]
            parts.append(dask.delayed(load_partition, pure=False)(task, texts))
        # The bag's elements are molecules; each partition is one shard's molecules.
        bag = db.from_delayed(parts).map_partitions(process_partition, str(out), bond_options)
        futures = client.compute(bag.to_delayed(), retries=int(cfg.retries))
        index_of = {f.key: t.index for f, t in zip(futures, tasks)}
        with tqdm(total=len(futures), desc="shards", disable=not progress) as bar:
            for future in as_completed(futures):
                try:
                    results.extend(future.result())
                except Exception as exc:  # a bug or a lost worker: report, keep the other shards
                    errors.append({"shard": index_of.get(future.key), "error": f"{type(exc).__name__}: {exc}"})
                bar.update(1)
    return results, errors


def preprocess(cfg: DictConfig, log=print) -> dict:
    """Run the stage for a loaded ``preprocess_qm9`` config; return the manifest dict.

    Raises
    ------
    FileNotFoundError
        Source or exclusion list missing; ``qm9pack`` not installed.
    FileExistsError
        ``out`` holds shards of another source/settings and ``overwrite`` is false.
    ValueError
        Unknown source form, bad CSV header, bad settings.
    RuntimeError
        Some shards failed (the others are kept; re-run to retry them).
    """
    t0 = time.perf_counter()
    src = resolve_source(cfg.source)
    out = Path(cfg.out).expanduser()
    log(f"preprocess-qm9: scanning {src.kind} source {src.description}")
    p = plan(cfg, src, log)
    tasks, counts = p["tasks"], p["counts"]
    out.mkdir(parents=True, exist_ok=True)
    _check_out_dir(out, p, bool(cfg.overwrite))
    t_scan = time.perf_counter() - t0
    log(f"preprocess-qm9: {counts['found']} molecules found, {counts['excluded_uncharacterized']} "
        f"uncharacterized excluded, {len(tasks)} shards planned ({t_scan:.1f} s)")
    config = OmegaConf.to_container(cfg, resolve=True)
    manifest = {"format": MANIFEST_FORMAT, "format_version": SHARD_FORMAT_VERSION, "status": "incomplete",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "run_hash": p["run_hash"], "source": p["source"], "config": config,
                "settings": p["settings"], "split_planned": p["split_planned"],
                "shards": [{"file": shard_name(t.index), "index": t.index, "plan_hash": t.plan_hash}
                           for t in tasks]}
    write_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=1, default=str))
    _clean(out, {shard_name(t.index) for t in tasks}, log)

    done = {t.index: shard_attrs(out / shard_name(t.index)) for t in tasks
            if shard_is_valid(out / shard_name(t.index), t.plan_hash)}
    pending = [t for t in tasks if t.index not in done]
    log(f"preprocess-qm9: {len(done)} shards already complete, {len(pending)} to compute")
    bond_options = OmegaConf.to_container(cfg.bonds, resolve=True)
    progress = bool(cfg.progress)
    t1 = time.perf_counter()
    if not pending:
        results, errors = [], []
    elif str(cfg.cluster) == "serial":
        results, errors = _run_serial(pending, src, out, bond_options, log, progress)
    else:
        results, errors = _run_dask(cfg, pending, src, out, bond_options, log, progress)
    t_compute = time.perf_counter() - t1
    n_new = sum(r["n_records"] for r in results)

    by_index = {r["shard_index"]: r for r in results}
    by_index.update({i: {**a, "file": shard_name(i)} for i, a in done.items()})
    shards, skipped, methods = [], list(p["skipped"]), Counter()
    for t in tasks:
        s = by_index.get(t.index)
        if s is None:
            continue
        skipped.extend(s["skipped"])
        methods.update(s.get("bond_methods", {}))
        shards.append({k: s[k] for k in ("file", "shard_index", "plan_hash", "n_records", "n_molecules",
                                          "n_skipped", "n_bond_perception_failed", "split_counts",
                                          "first_gdb_id", "last_gdb_id")})
    skipped.sort(key=lambda s: (s["name"], s.get("line") or 0))
    written = sum(s["n_molecules"] for s in shards)
    counts.update({
        "written": written, "skipped": len(skipped),
        "bond_perception_failed": sum(s["n_bond_perception_failed"] for s in shards),
        "split": {n: sum(s["split_counts"][n] for s in shards) for n in SPLIT_NAMES}})
    complete = not errors and len(shards) == len(tasks)
    if complete and counts["parsed"] != written + len(skipped):
        raise RuntimeError(f"count mismatch: parsed {counts['parsed']} != written {written} + skipped {len(skipped)}")
    # Every input malformed (or none at all): not a dataset, whatever the shards say.
    status = ("empty" if written == 0 else "complete") if complete else "incomplete"
    manifest.update({
        "status": status, "shards": shards, "counts": counts,
        "skipped": skipped, "bond_methods": dict(methods), "errors": errors,
        "timing": {"scan_s": round(t_scan, 3), "compute_s": round(t_compute, 3),
                   "total_s": round(time.perf_counter() - t0, 3), "shards_computed": len(results),
                   "shards_reused": len(done), "molecules_computed": n_new,
                   # summed over workers: where the time goes inside the partitions
                   "worker_s": {k: round(sum(r["seconds"][k] for r in results), 3)
                                for k in ("parse", "bonds", "write", "total")},
                   "molecules_per_s": round(n_new / t_compute, 1) if n_new and t_compute > 0 else None}})
    write_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=1, default=str))
    _report(manifest, out, log)
    if errors:
        raise RuntimeError(f"{len(errors)} shard(s) failed ({errors[0]['error']}); the other shards are "
                           f"kept, re-run the same command to retry")
    if status == "empty":
        first = next((f"; first: {s['name']}" + (f" line {s['line']}" if s.get("line") else "")
                      + f": {s['reason']}" for s in skipped), "")
        raise ValueError(f"no molecule of QM9 source {src.description} could be used: found {counts['found']}, "
                         f"excluded {counts['excluded_uncharacterized']}, skipped {len(skipped)}{first} "
                         f"(manifest status 'empty')")
    return manifest


def _report(m: dict, out: Path, log) -> None:
    c, t = m["counts"], m["timing"]
    log(f"preprocess-qm9: wrote {out / MANIFEST_NAME}")
    log(f"  found {c['found']} = excluded {c['excluded_uncharacterized']} + parsed {c['parsed']}; "
        f"parsed = written {c['written']} + skipped {c['skipped']}")
    log(f"  split: " + ", ".join(f"{k} {v}" for k, v in c["split"].items()))
    log(f"  bond orders not perceived (kept with single bonds, flagged): {c['bond_perception_failed']}"
        f"; methods: {m['bond_methods']}")
    rate = f", {t['molecules_per_s']} molecules/s" if t["molecules_per_s"] else ""
    log(f"  shards: {t['shards_computed']} computed, {t['shards_reused']} reused; "
        f"compute {t['compute_s']:.1f} s{rate}; total {t['total_s']:.1f} s")
    if m["skipped"]:
        log(f"  skipped {len(m['skipped'])} record(s):")
        for s in m["skipped"][:50]:
            where = f"{s['name']} line {s['line']}" if s.get("line") else s["name"]
            log(f"    {where}: {s['reason']}")
        if len(m["skipped"]) > 50:
            log(f"    ... {len(m['skipped']) - 50} more in {out / MANIFEST_NAME}")
