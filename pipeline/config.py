"""OmegaConf configs for every ``invattn`` subcommand.

Each subcommand has a YAML file ``configs/<name>.yaml``.  A config may contain a
``preset`` key; ``preset=NAME`` then overlays ``configs/<name>/NAME.yaml`` before the
remaining ``key=value`` overrides are applied.  Keys are strict: an override that names
a key the YAML does not define raises :class:`ConfigError` listing the closest keys.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigError", "config_dir", "load_config", "flat_keys", "describe_keys"]


class ConfigError(ValueError):
    """A config file or a ``key=value`` override is invalid; the message names the key."""


def config_dir() -> Path:
    """Directory holding the YAML configs (``$INVATTN_CONFIG_DIR`` or ``<repo>/configs``)."""
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
        Unknown key (with close matches), malformed override, missing or unreadable file,
        unknown preset.
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
    OmegaConf.set_struct(cfg, True)
    return cfg


_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w\-]*):(?P<rest>[^#]*)(#\s?(?P<doc>.*))?$")


def describe_keys(name: str) -> str:
    """Human-readable list of every key of ``configs/<name>.yaml`` with default and comment."""
    path = config_dir() / f"{name}.yaml"
    cfg = _read_yaml(path)
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
    for key, value in flat_keys(cfg).items():
        doc = docs.get(key, "")
        rows.append(f"  {key}={value!r}" + (f"    # {doc}" if doc else ""))
    presets = sorted(p.stem for p in (config_dir() / name).glob("*.yaml"))
    tail = f"\npresets (preset=NAME): {', '.join(presets)}" if presets else ""
    return "keys (override with key=value):\n" + "\n".join(rows) + tail
