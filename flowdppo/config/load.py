"""YAML → typed ``RunConfig``: unknown keys and wrong types are errors naming key and file.

``load_config(path, overrides)`` reads a YAML file (or nothing: the defaults), applies
``--set a.b=c`` overrides (values parsed as YAML scalars: ``--set loss.delta=1e-6``), converts
every value to its field's declared type, and validates the result.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from flowdppo.config.schema import ConfigError, RunConfig


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to type ``tp`` or raise ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        items = args if origin is tuple else [args[0]] * len(value)
        out = [
            _convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items, strict=True))
        ]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key(s) {[where + k for k in unknown]}; valid keys of {prefix or 'the config'}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
        choices = names[name].metadata.get("choices")
        if choices and kwargs[name] not in choices:
            raise ConfigError(f"{key}: expected one of {list(choices)}, got {kwargs[name]!r}")
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def yaml_error_text(err: yaml.YAMLError) -> str:
    """One line for a YAML parse error: where (line, column) and what, without PyYAML's excerpt."""
    mark = getattr(err, "problem_mark", None)
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    what = ", ".join(p for p in parts if p) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark else what


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=c"`` → ``("a.b", yaml-parsed c)``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. loss.delta=1e-6")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {key}: cannot parse value {raw!r}: {yaml_error_text(err)}"
        ) from None
    return key.strip(), value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    label: str | None = None,
) -> RunConfig:
    """Load, override, convert and validate a run configuration.

    An error names ``label`` if given (empty: nothing, for a caller that names the source itself),
    else the config file, else ``--set`` when only overrides were given."""
    data: dict[str, Any] = {}
    source = "--set" if overrides else "defaults"
    if path is not None:
        source = str(path)
        if Path(path).is_dir():
            raise ConfigError(f"config file {path} is a directory; expected a YAML file")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist") from err
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason})"
            ) from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML at {yaml_error_text(err)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping at the top level, got {type(loaded).__name__}"
            )
        data = loaded or {}
    for text in overrides or []:
        _set_path(data, *parse_override(text))
    try:
        cfg = config_from_dict(data)
    except ConfigError as err:
        if label is not None:
            source = label
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated config from a (nested) dict: keys it lacks take today's defaults, so a dict
    written by an older flowdppo reads as the run it described."""
    cfg = _build(RunConfig, data, "")
    cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a config (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used), atomically: a run killed
    while writing it keeps the previous file (a cut YAML file may still parse, with defaults in
    place of the lost keys)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
