"""``flowdppo.config.docs``: docs/config.md is generated from the schema and up to date."""

from __future__ import annotations

from pathlib import Path

from flowdppo.config import RunConfig
from flowdppo.config.docs import render, type_name

from .test_load import _fields

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "docs/config.md is stale: run `python -m flowdppo.config.docs > docs/config.md`"
    )


def test_every_field_is_in_the_docs_with_its_default() -> None:
    text = render()
    for key, _ in _fields(RunConfig):
        assert f"| `{key}` |" in text, key
    assert "| `loss.delta` | `float` | `1.0e-05` |" in text
    assert "| `sampling.train_pool` | `tuple[float, float]` | `[0.0, 0.3]` |" in text
    assert "(choices: `mean`, `sum`)" in text


def test_type_names() -> None:
    assert type_name(int) == "int"
    assert type_name(str | None) == "str | None"
    assert type_name(tuple[float, float]) == "tuple[float, float]"
    assert type_name(list[str] | None) == "list[str] | None"
