"""Tests for flowdppo/config/flags.py: flags derived from typed dataclass fields, and back."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from flowdppo.config.flags import (
    add_flags,
    float_pairs,
    from_flags,
    positive_int,
    typed_field,
)
from flowdppo.shapes.recipe import PretrainConfig


@dataclasses.dataclass
class Toy:
    rate: float = typed_field(0.5, "a rate", flag=True)
    steps: int = typed_field(3, "steps", flag=True, type=positive_int)
    kind: str = typed_field("a", "a kind", flag=True, choices=("a", "b"))
    path: str | None = typed_field(None, "a path", flag=True)
    fast: bool = typed_field(False, "a switch", flag=True)
    names: list[str] | None = typed_field(None, "names", flag="--name", metavar="NAME")
    weights: dict[str, float] | None = typed_field(None, "weights", flag="--weight")
    hidden: int = typed_field(7, "no flag")


def _parse(*argv: str) -> Toy:
    p = argparse.ArgumentParser()
    add_flags(p, Toy)
    return from_flags(Toy, p.parse_args(argv), hidden=8)


def test_no_flags_give_the_dataclass_defaults_and_flags_their_types():
    assert _parse() == Toy(hidden=8)
    got = _parse(
        "--rate", "2", "--steps", "4", "--kind", "b", "--path", "p", "--fast",
        "--name", "x", "--name", "y", "--weight", "u=2", "--weight", "v",
    )  # fmt: skip
    assert (got.rate, got.steps, got.kind, got.path, got.fast) == (2.0, 4, "b", "p", True)
    assert got.names == ["x", "y"]
    assert got.weights is not None and got.weights["u"] == 2.0 and math.isnan(got.weights["v"])
    for bad in (["--steps", "0"], ["--kind", "c"], ["--hidden", "1"], ["--rate", "x"]):
        with pytest.raises(SystemExit):
            _parse(*bad)


def test_float_pairs():
    assert float_pairs(None) is None and float_pairs([]) is None
    assert float_pairs(["position=3", "counting=0.5"]) == {"position": 3.0, "counting": 0.5}
    assert math.isnan(float_pairs(["a=x"])["a"])  # type: ignore[index]


def test_every_pretrain_flag_comes_from_a_field_with_its_default():
    p = argparse.ArgumentParser()
    add_flags(p, PretrainConfig)
    flags = {a.option_strings[0]: a for a in p._actions if a.option_strings != ["-h", "--help"]}
    assert sorted(flags) == sorted(
        [
            "--steps",
            "--lr",
            "--sigma-logit-mean",
            "--seed",
            "--threads",
            "--init",
            "--category-weight",
            "--prior-batch",
            "--prior-scenes",
            "--prior-weight",
            "--prior-category",
            "--flow-weight",
            "--caption-noise",
            "--caption-noise-kind",
        ]
    )
    assert from_flags(PretrainConfig, p.parse_args([])) == PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        assert f.metadata["help"], f.name  # every field has its help, flagged or not
