"""OmegaConf configs for every ``invattn`` subcommand.

Each subcommand has a YAML file ``configs/<name>.yaml``.  A config may contain a
``preset`` key; ``preset=NAME`` then overlays ``configs/<name>/NAME.yaml`` before the
remaining ``key=value`` overrides are applied.  Keys are strict: an override that names
a key the YAML does not define raises :class:`ConfigError` listing the closest keys.

Values are typed: every key has the type of its YAML default (an integer default makes an
integer key, and so on), except the keys listed in :data:`KEY_TYPES` (null defaults and keys
that take several kinds of value).  :func:`load_config` checks every value against its type
after the preset and the overrides are applied, so ``seed=abc`` fails with one line naming
``seed`` instead of a Python error deep inside a command.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigError", "KEY_TYPES", "config_dir", "load_config", "flat_keys", "describe_keys",
           "key_types", "check_types"]


class ConfigError(ValueError):
    """A config file or a ``key=value`` override is invalid; the message names the key."""


def config_dir() -> Path:
    """Directory holding the YAML configs: ``$INVATTN_CONFIG_DIR``, else ``configs/`` beside this package
    (the repository's folder in a checkout, the ``invattn/configs`` package data when installed)."""
    env = os.environ.get("INVATTN_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and OmegaConf errors carry the line
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return cfg


def flat_keys(cfg: DictConfig, prefix: str = "") -> dict[str, object]:
    """Flatten a config into ``{"a.b.c": value}`` (lists and leaves are values)."""
    out: dict[str, object] = {}
    for key in cfg.keys():
        full = f"{prefix}{key}"
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none():
            sub = flat_keys(node, full + ".")
            out.update(sub if sub else {full: {}})
        else:
            out[full] = OmegaConf.to_container(node) if isinstance(node, ListConfig) else node._value()
    return out


def _check_keys(base: DictConfig, overrides: Iterable[str], source: str) -> None:
    known = flat_keys(base)
    prefixes = {k.rsplit(".", i)[0] for k in known for i in range(k.count(".") + 1)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].lstrip("+~")
        if key in known or key in prefixes:
            continue
        close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key {key!r} for {source}{hint}")


# --- value types -------------------------------------------------------------------------
# A type is "int", "float", "bool", "str", "null", a quoted word ('all'), "list[T]" or
# "dict[T]", joined by "|".  Only keys whose default does not show their type are listed;
# tests/test_robustness_inputs.py checks that every key of every config gets a type.
_STR_OR_NULL = "str | null"
KEY_TYPES: dict[str, dict[str, str]] = {
    "simulate": {
        "preset": _STR_OR_NULL, "box_size": "float | null", "shard_index": "int | null",
        "num_threads": "int | null", "progress": "bool | str",
    },
    "preprocess_qm9": {
        "exclude.ids_file": _STR_OR_NULL, "scheduler_address": _STR_OR_NULL, "connect_timeout_s": "float",
        "local.n_workers": "int | null", "local.memory_limit": "str | int",
        "slurm.queue": _STR_OR_NULL, "slurm.account": _STR_OR_NULL, "slurm.job_extra_directives": "list[str]",
        "slurm.local_directory": _STR_OR_NULL, "slurm.log_directory": _STR_OR_NULL, "slurm.interface": _STR_OR_NULL,
        "slurm.python": _STR_OR_NULL, "slurm.wait_timeout_s": "float",
    },
    "evaluate": {"checkpoint": _STR_OR_NULL, "data_dir": _STR_OR_NULL, "output": _STR_OR_NULL},
    "reproduce_table1": {
        "lr_by_group": "dict[float] | null", "ray_address": _STR_OR_NULL, "cpus_per_trial": "float",
        "output_dir": _STR_OR_NULL,
    },
    "sweep": {
        "preset": _STR_OR_NULL, "train_preset": _STR_OR_NULL, "storage_path": _STR_OR_NULL, "metric": _STR_OR_NULL,
        "report_metrics": "list[str] | null", "train_overrides": "list[str]",
        "search.lr_loguniform": "list[float] | null", "search.subdeterminants": "list[int | 'all']",
        "search.groups": "list[str] | null", "search.lr_by_group": "dict[float] | null",
        "resources.cpus_per_trial": "float", "resources.gpus_per_trial": "float",
        "ray.address": _STR_OR_NULL, "ray.num_cpus": "int | null", "ray.num_gpus": "int | null",
        "ray.temp_dir": _STR_OR_NULL, "submitit.partition": _STR_OR_NULL, "submitit.cpus_per_node": "int | null",
        "submitit.additional": "dict", "fault_injection.crash_once_at_epoch": "int | null",
    },
}
_TRAIN_TYPES = {
    "preset": _STR_OR_NULL, "model.subdeterminants": "int | 'all'", "model.cross_products": "int | 'all'",
    "train.grad_clip": "float | null", "train.progress": "bool | str",
    "model.cutoff": "float | null", "model.cutoff_inner": "float | null",
}
KEY_TYPES["train_nbody"] = {**_TRAIN_TYPES, "data.max_train_sims": "int | null",
                            "data.max_test_sims": "int | null", "data.start_frame": "int | null"}
KEY_TYPES["train_qm9"] = dict(_TRAIN_TYPES)
KEY_TYPES["reproduce_nbody_egnn"] = dict(KEY_TYPES["reproduce_table1"])

_NAMES = {"int": ("an integer", "integers"), "float": ("a number", "numbers"),
          "bool": ("true or false", "true/false"), "str": ("a string", "strings"),
          "null": ("null", "nulls"), "dict": ("a mapping", "mappings")}


def _split_alternatives(spec: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def _describe(spec: str, plural: bool = False) -> str:
    words = []
    for alt in _split_alternatives(spec):
        if alt.startswith(("list[", "dict[")):
            inner = _describe(alt[5:-1], plural=True)
            words.append(f"a list of {inner}" if alt.startswith("list") else f"a mapping to {inner}")
        elif alt.startswith("'"):
            words.append(alt)
        else:
            words.append(_NAMES[alt][plural])
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


class _Mismatch(Exception):
    pass


def _coerce(value, spec: str):
    """``value`` converted to ``spec`` (ints to floats, whole floats to ints, numbers to
    strings); raises :class:`_Mismatch` when it is not of that type."""
    for alt in _split_alternatives(spec):
        if alt == "null" and value is None:
            return None
        if value is None:
            continue
        if alt.startswith("list[") and isinstance(value, list):
            return [_coerce(v, alt[5:-1]) for v in value]
        if alt.startswith("dict") and isinstance(value, dict):
            return value if alt == "dict" else {k: _coerce(v, alt[5:-1]) for k, v in value.items()}
        if isinstance(value, (list, dict)):
            continue
        if alt == "bool" and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if alt == "int" and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return int(value)
        if alt == "float" and isinstance(value, (int, float)):
            return float(value)
        if alt.startswith("'") and value == alt.strip("'"):
            return value
    # Strings last: "8" given for an int | 'all' key is refused rather than kept as text.
    if "str" in _split_alternatives(spec) and isinstance(value, (str, int, float)) \
            and not isinstance(value, bool):
        return str(value)
    raise _Mismatch


def _infer_type(value) -> str | None:
    """The type a YAML default implies (None for null or an empty list: must be declared)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list) and value:
        kinds = {_infer_type(v) for v in value}
        if kinds <= {"int", "float"}:
            return "list[float]" if "float" in kinds else "list[int]"
        return f"list[{kinds.pop()}]" if len(kinds) == 1 else None
    return None


def key_types(name: str, base: DictConfig | None = None) -> dict[str, str | None]:
    """``{key: type}`` for every key of ``configs/<name>.yaml`` (None: no type known)."""
    base = _read_yaml(config_dir() / f"{name}.yaml") if base is None else base
    declared = KEY_TYPES.get(name, {})
    return {key: declared.get(key) or _infer_type(value) for key, value in flat_keys(base).items()}


def check_types(cfg: DictConfig, types: dict[str, str | None]) -> None:
    """Check (and normalize in place) every value of ``cfg`` against ``types``.

    Raises
    ------
    ConfigError
        ``config key <key> must be <type>, got <value>`` for the first mismatch.
    """
    for key, spec in types.items():
        if spec is None:
            continue
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        value = OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig)) else node
        try:
            new = _coerce(value, spec)
        except _Mismatch:
            raise ConfigError(f"config key {key} must be {_describe(spec)}, got {value!r}") from None
        if new != value or type(new) is not type(value):
            OmegaConf.update(cfg, key, new, merge=False)


def load_config(name: str, overrides: Iterable[str] = ()) -> DictConfig:
    """Load ``configs/<name>.yaml``, overlay the preset it selects, then ``overrides``.

    Parameters
    ----------
    name : str
        Config name, e.g. ``"simulate"`` or ``"train"``.
    overrides : iterable of str
        OmegaConf dotlist entries ``key=value``.

    Raises
    ------
    ConfigError
        Unknown key (with close matches), a value of the wrong type (naming the key and the
        type), malformed override, missing or unreadable file, unknown preset.
    """
    overrides = list(overrides)
    path = config_dir() / f"{name}.yaml"
    base = _read_yaml(path)
    _check_keys(base, overrides, str(path))
    try:
        over = OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {overrides}: {exc}") from exc
    cfg = base
    preset = over.get("preset", base.get("preset")) if "preset" in base else None
    if preset:
        preset_path = config_dir() / name / f"{preset}.yaml"
        if not preset_path.is_file():
            avail = sorted(p.stem for p in (config_dir() / name).glob("*.yaml"))
            raise ConfigError(f"unknown preset {preset!r} for {name}: choose one of {avail}")
        overlay = _read_yaml(preset_path)
        _check_keys(base, [f"{k}=0" for k in flat_keys(overlay)], str(preset_path))
        cfg = OmegaConf.merge(cfg, overlay)
    try:
        cfg = OmegaConf.merge(cfg, over)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid override for {name}: {exc}") from exc
    check_types(cfg, key_types(name, base))
    _expand_home(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _expand_home(cfg: DictConfig) -> None:
    """``~/...`` string values become paths in the home folder, in place (a bare ``~`` is YAML's null).

    The shell expands ``~`` only at the start of a word, so ``out=~/data`` reaches us as typed,
    and would otherwise make a folder named ``~`` in the working directory.
    """
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            _expand_home(value)
        elif isinstance(value, str) and value.startswith("~/"):
            cfg[key] = os.path.expanduser(value)


_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w\-]*):(?P<rest>[^#]*)(#\s?(?P<doc>.*))?$")


def describe_keys(name: str, overrides: Iterable[str] = ()) -> str:
    """Human-readable list of every key of ``configs/<name>.yaml`` with default and comment.

    With ``overrides`` (``invattn simulate preset=demo --help``) the values shown are those the
    overrides give, preset included, and the header says so.

    Raises
    ------
    ConfigError
        As :func:`load_config`, for bad ``overrides``.
    """
    path = config_dir() / f"{name}.yaml"
    cfg = _read_yaml(path)
    overrides = [str(a) for a in overrides]
    values = flat_keys(load_config(name, overrides)) if overrides else flat_keys(cfg)
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        full = ".".join([k for _, k in stack] + [m.group("key")])
        if m.group("doc"):
            docs[full] = m.group("doc").strip()
        if not m.group("rest").strip():
            stack.append((indent, m.group("key")))
    rows = []
    types = key_types(name, cfg)
    for key, value in values.items():
        doc = docs.get(key, "")
        kind = f"  ({types[key]})" if types.get(key) else ""
        rows.append(f"  {key}={value!r}{kind}" + (f"    # {doc}" if doc else ""))
    presets = sorted(p.stem for p in (config_dir() / name).glob("*.yaml"))
    tail = f"\npresets (preset=NAME): {', '.join(presets)}" if presets else ""
    given = f"; values with {' '.join(overrides)}" if overrides else ""
    return (f"keys (override with key=value; each value must have the type in parentheses{given}):\n"
            + "\n".join(rows) + tail)
