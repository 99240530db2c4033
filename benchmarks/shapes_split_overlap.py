"""What a model that memorises training layouts would score on the compositional test prompts.

The train/test split is of prompt *strings*, so a test prompt's objects can appear in training
in another prompt: "a red square and a green circle" (test) beside "a green square and a red
circle" (train), or "a red circle to the left of a blue square" (test) beside "a blue square to
the left of a red circle" (train). A model that maps a prompt's objects to the composition it
saw for them in training, without reading the binding or the relation, is right on a test
prompt whose objects were trained only with the same composition, wrong when only with the
other, and guesses otherwise. This counts the three cases:

- color_attr: the two (colour, shape) pairs of the prompt; compositions = which colour sits on
  which shape.
- position: the two objects and the relation's axis; compositions = which object comes first
  along the axis (left / above).

    .venv/bin/python benchmarks/shapes_split_overlap.py

docs/experiments/base-model.md compares the expected score with the base models' measured
rate (benchmarks/shapes_base_skills.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from flowdppo.shapes.prompts import PromptSpec, load_split

FIRST = ("to the left of", "above")  # group 0 comes first along the axis
AXIS = {"to the left of": "x", "to the right of": "x", "above": "y", "below": "y"}


def composition(spec: PromptSpec) -> tuple[Hashable, Hashable]:
    """(what the prompt is about, how it composes it): the key a memorising model can look up,
    and the choice it would have to get right."""
    a, b = spec.groups
    if spec.category == "position":
        assert spec.relation is not None
        first, second = (a, b) if spec.relation in FIRST else (b, a)
        return (AXIS[spec.relation], frozenset((a, b))), (first, second)
    if spec.category == "color_attr":
        colors = frozenset((a.color, b.color))
        shapes = frozenset((a.shape, b.shape))
        return (colors, shapes), frozenset(((a.color, a.shape), (b.color, b.shape)))
    raise ValueError(f"{spec.text!r}: not a color_attr or position prompt")


def overlap(train: Iterable[PromptSpec], test: Iterable[PromptSpec]) -> dict[str, int]:
    """Counts of test prompts whose key is in training with only the same composition, only
    another, both, or not at all."""
    seen: dict[Hashable, set[Hashable]] = {}
    for s in train:
        key, comp = composition(s)
        seen.setdefault(key, set()).add(comp)
    counts = {"only_same": 0, "only_other": 0, "both": 0, "unseen": 0}
    for s in test:
        key, comp = composition(s)
        comps = seen.get(key, set())
        same, other = comp in comps, bool(comps - {comp})
        counts[
            "both"
            if same and other
            else "only_same"
            if same
            else "only_other"
            if other
            else "unseen"
        ] += 1
    return counts


def memoriser_accuracy(c: dict[str, int]) -> float:
    """Right on only_same, wrong on only_other, a coin on the rest."""
    n = sum(c.values())
    return (c["only_same"] + 0.5 * (c["both"] + c["unseen"])) / n


def main() -> None:
    train, test = load_split("train"), load_split("test")
    for cat in ("color_attr", "position"):
        c = overlap((s for s in train if s.category == cat), (s for s in test if s.category == cat))
        print(
            f"{cat}: {sum(c.values())} test prompts; their objects in training with only the same "
            f"composition {c['only_same']}, only the other {c['only_other']}, both {c['both']}, "
            f"never {c['unseen']}; a memorising model scores {100 * memoriser_accuracy(c):.0f}%"
        )


if __name__ == "__main__":
    main()
