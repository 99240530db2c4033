"""``python -m flowdppo.config.docs > docs/config.md``: the config reference, from the schema.

One table per section (field, type, default, help; choices are listed in the help column).
``tests/config/test_docs.py`` fails when docs/config.md differs from this output.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from flowdppo.config.load import config_to_dict
from flowdppo.config.schema import RewardEntry, RunConfig

HEADER = """# Configuration

Generated from `flowdppo/config/schema.py` by `python -m flowdppo.config.docs > docs/config.md`
(a test checks it is up to date). A run's YAML file holds any subset of these keys; the rest take
their defaults. Override from the command line with `--set section.key=value` (values are YAML:
`--set loss.delta=1e-6`, `--set sampling.train_pool=[0.0,0.5]`,
`--set 'rewards=[{name: shapes_tifa}, {name: jpeg_compressibility, weight: 0.1}]'`). Unknown
keys, wrong types and invalid values are errors that name the key, the value and the file. The
resolved config of a run is saved as `RUN/config.yaml`.
"""


def type_name(tp: Any) -> str:
    """``int``, ``float | None``, ``tuple[float, float]``, ``list[str] | None``, ..."""
    if tp is type(None):
        return "None"
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("Any" if a is Any else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]


def _value(v: Any) -> str:
    """A default as it would be written in YAML (flow style)."""
    import yaml

    v = config_to_dict(v)
    return (
        "`"
        + yaml.safe_dump(v, default_flow_style=True, width=1000, sort_keys=False)
        .strip()
        .removesuffix("\n...")
        + "`"
    )


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices:
        text += f" (choices: {', '.join(f'`{c}`' for c in choices)})"
    return text.replace("|", "\\|")


def _table(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | help |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        rows.append(_row(f"{prefix}{f.name}", hints[f.name], f))
    return rows


def _row(key: str, tp: Any, f: dataclasses.Field) -> str:
    # A "|" inside a table cell must be escaped, also inside a code span (GFM tables).
    return f"| `{key}` | `{type_name(tp)}` | {_value(_default(f))} | {_help(f)} |".replace(
        " | None`", " \\| None`"
    )


def render() -> str:
    """The whole of docs/config.md."""
    out = [HEADER]
    hints = typing.get_type_hints(RunConfig)
    top = []
    for f in dataclasses.fields(RunConfig):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += [f"## `{f.name}`", ""]
            out += _table(tp, f"{f.name}.")
            out.append("")
        elif f.name == "rewards":
            out += [
                "## `rewards`",
                "",
                "A list of rewards, aggregated by `advantage.aggregate`; default "
                f"{_value(_default(f))}. Each entry:",
                "",
            ]
            out += _table(RewardEntry, "rewards[].")
            out.append("")
        else:
            top.append(f)
    if top:
        out += ["## Top level", "", "| key | type | default | help |", "|---|---|---|---|"]
        out += [_row(f.name, hints[f.name], f) for f in top]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
