"""Command-line flags from a dataclass's typed fields: each field once, with type, default, help.

A field declared with ``typed_field(default, help, flag=...)`` becomes a flag: ``flag=True``
derives its name from the field (``caption_noise`` → ``--caption-noise``), a string names it
(``--prior-category`` for ``prior_categories``). The field's type gives the action: ``bool`` a
``store_true`` switch; ``int`` / ``float`` / ``str`` (or ``X | None``) one value; ``list[str] |
None`` a repeatable flag collected into a list; ``dict[str, float] | None`` a repeatable
``KEY=VALUE`` flag (``float_pairs``). Metadata ``choices``, ``metavar`` and ``type`` (an argparse
type function, e.g. ``positive_int``) are passed on; the flag's default is the field's.
``from_flags`` builds the dataclass back from the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def typed_field(default: Any, help: str, *, flag: bool | str = False, **meta: Any) -> Any:
    """A dataclass field with its help (and ``flag``, ``choices``, ``metavar``, ``type``)."""
    metadata = {"help": help, "flag": flag, **meta}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse reports anything else, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def float_pairs(items: list[str] | None) -> dict[str, float] | None:
    """``["position=3", ...]`` → ``{"position": 3.0}``; None when no item. A missing or bad value
    is NaN, so that the dataclass's own check refuses it, naming the flag."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value) if sep else float("nan")
        except ValueError:
            out[name] = float("nan")
    return out


def _flag_fields(cls: type) -> list[tuple[dataclasses.Field, str, Any]]:
    """(field, flag name, type without None) of each flagged field, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag", False)
        if not flag:
            continue
        name = flag if isinstance(flag, str) else "--" + f.name.replace("_", "-")
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        tp = (
            args[0] if typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType) else None
        )
        out.append((f, name, tp or hints[f.name]))
    return out


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add a flag for each flagged field of the dataclass ``cls`` (module docstring)."""
    for f, name, tp in _flag_fields(cls):
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"].replace("%", "%%")}
        default = f.default if f.default is not dataclasses.MISSING else None
        origin = typing.get_origin(tp)
        if tp is bool:
            kw.update(action="store_true")
        elif origin in (list, dict):  # repeatable; None when not given
            kw.update(action="append", default=None)
        else:
            kw.update(type=f.metadata.get("type", tp), default=default)
        for key in ("choices", "metavar"):
            if key in f.metadata:
                kw[key] = f.metadata[key]
        parser.add_argument(name, **kw)


def from_flags(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """The dataclass ``cls`` of the parsed flags (``extra``: its other fields, if any)."""
    values = dict(extra)
    for f, _, tp in _flag_fields(cls):
        value = getattr(args, f.name)
        values[f.name] = float_pairs(value) if typing.get_origin(tp) is dict else value
    return cls(**values)
