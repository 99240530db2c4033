"""Shapes prompts: GenEval-style categories, a grammar, atoms, and the shipped train/test split.

Each category isolates one skill (docs/shapes.md, "The world"):

| category      | template                                     | skill                         |
|---------------|----------------------------------------------|-------------------------------|
| single_object | "a red circle"                               | one object                    |
| colors        | "a red circle and a blue circle"             | two colours, one shape        |
| two_object    | "a red circle and a red square"              | two shapes, one colour        |
| color_attr    | "a red square and a green circle"            | binding colours to shapes     |
| counting      | "three yellow triangles" (two..four)         | exact count                   |
| position      | "a red circle to the left of a blue triangle"| spatial relation              |

Atoms (the checks a prompt makes): "a X" → X present (≥ 1, GenEval's semantics);
"three X" → X present and exactly 3 X; relation → some A and some B stand in that relation;
and, for every prompt, ``exact``: the image holds exactly the described objects, nothing more.
GenEval has no ``exact`` atom ("a X" passes with several X); we add it because RL exploits
its absence: a Flow-DPPO run on the dense reward learned to draw two or three copies of "a red
circle" to raise its odds on the presence atoms, and counting accuracy fell from 60% to 18%
while every other category rose (docs/experiments/reward-design.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import permutations
from types import MappingProxyType

import numpy as np

from flowdppo.shapes.world import COLORS, GRID, NUM_CELLS, SHAPES, Scenes, place_object

CATEGORIES = ("single_object", "colors", "two_object", "color_attr", "counting", "position")
NUMBER_WORDS = {"a": 1, "two": 2, "three": 3, "four": 4}
RELATIONS = ("to the left of", "to the right of", "above", "below")
TEST_FRACTION = 1 / 3
SPLIT_SEED = 20260609


@dataclass(frozen=True)
class ObjectGroup:
    """``count`` objects of one colour and shape (indices into COLORS, SHAPES)."""

    color: int
    shape: int
    count: int = 1

    def text(self) -> str:
        c, s = COLORS[self.color], SHAPES[self.shape]
        if self.count == 1:
            return f"a {c} {s}"
        word = next(w for w, n in NUMBER_WORDS.items() if n == self.count)
        return f"{word} {c} {s}s"


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: its object groups and, for ``position``, a relation of group 0 to 1."""

    category: str
    groups: tuple[ObjectGroup, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.relation is not None:
            return f"{self.groups[0].text()} {self.relation} {self.groups[1].text()}"
        return " and ".join(g.text() for g in self.groups)

    def atoms(self) -> list[dict[str, object]]:
        """The prompt's atomic checks, JSON-serialisable."""
        out: list[dict[str, object]] = []
        for g in self.groups:
            out.append({"kind": "present", "color": COLORS[g.color], "shape": SHAPES[g.shape]})
            if g.count > 1:
                out.append(
                    {
                        "kind": "count",
                        "color": COLORS[g.color],
                        "shape": SHAPES[g.shape],
                        "n": g.count,
                    }
                )
        if self.relation is not None:
            out.append({"kind": "relation", "relation": self.relation, "a": 0, "b": 1})
        out.append({"kind": "exact"})
        return out


def _object_phrase(words: list[str], text: str) -> ObjectGroup:
    if len(words) != 3:
        raise ValueError(
            f"prompt {text!r}: expected '<a|two|three|four> <color> <shape>', got {' '.join(words)!r}"
        )
    num, color, shape = words
    if num not in NUMBER_WORDS:
        raise ValueError(
            f"prompt {text!r}: count {num!r} out of range; expected one of {list(NUMBER_WORDS)}"
        )
    count = NUMBER_WORDS[num]
    if count > 1:
        if not shape.endswith("s"):
            raise ValueError(f"prompt {text!r}: plural shape expected after {num!r}, got {shape!r}")
        shape = shape[:-1]
    if color not in COLORS:
        raise ValueError(f"prompt {text!r}: unknown colour {color!r}; expected one of {COLORS}")
    if shape not in SHAPES:
        raise ValueError(f"prompt {text!r}: unknown shape {shape!r}; expected one of {SHAPES}")
    return ObjectGroup(COLORS.index(color), SHAPES.index(shape), count)


def _categorise(groups: tuple[ObjectGroup, ...], relation: str | None) -> str:
    if relation is not None:
        return "position"
    if len(groups) == 1:
        return "counting" if groups[0].count > 1 else "single_object"
    a, b = groups
    if a.shape == b.shape and a.color != b.color:
        return "colors"
    if a.color == b.color and a.shape != b.shape:
        return "two_object"
    if a.color != b.color and a.shape != b.shape:
        return "color_attr"
    raise ValueError(f"two groups must differ: {a.text()!r} and {b.text()!r}")


def parse_prompt(text: str) -> PromptSpec:
    """Parse a Shapes prompt into its spec; a clear ``ValueError`` for anything out of grammar."""
    t = " ".join(text.strip().lower().split())
    for rel in RELATIONS:
        key = f" {rel} "
        if key in t:
            left, right = t.split(key, 1)
            groups = (_object_phrase(left.split(), text), _object_phrase(right.split(), text))
            if any(g.count != 1 for g in groups):
                raise ValueError(
                    f"prompt {text!r}: position prompts relate single objects ('a ...')"
                )
            if groups[0] == groups[1]:
                raise ValueError(f"prompt {text!r}: a relation needs two different objects")
            return PromptSpec("position", groups, rel)
    parts = t.split(" and ")
    if len(parts) > 2:
        raise ValueError(f"prompt {text!r}: at most two object phrases joined by 'and'")
    groups = tuple(_object_phrase(p.split(), text) for p in parts)
    if len(groups) == 2 and any(g.count != 1 for g in groups):
        raise ValueError(f"prompt {text!r}: two-object prompts use single objects ('a ...')")
    if len(groups) == 2 and groups[0] == groups[1]:
        raise ValueError(f"prompt {text!r}: the two objects must differ")
    return PromptSpec(_categorise(groups, None), groups, None)


def all_prompts(category: str) -> list[PromptSpec]:
    """Every prompt of a category, in a fixed order."""
    objs = [ObjectGroup(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES))]
    if category == "single_object":
        return [PromptSpec(category, (o,)) for o in objs]
    if category == "counting":
        return [
            PromptSpec(category, (ObjectGroup(o.color, o.shape, n),))
            for n in (2, 3, 4)
            for o in objs
        ]
    if category == "position":
        return [
            PromptSpec(category, (a, b), r) for a, b in permutations(objs, 2) for r in RELATIONS
        ]
    if category not in CATEGORIES:
        raise ValueError(f"category: unknown {category!r}; expected one of {CATEGORIES}")
    pairs = [(a, b) for a, b in permutations(objs, 2)]
    return [PromptSpec(category, p) for p in pairs if _categorise(p, None) == category]


def make_split(seed: int = SPLIT_SEED) -> dict[str, list[PromptSpec]]:
    """The train/test split: per category, a seeded shuffle, the first third is test."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[PromptSpec]] = {"train": [], "test": []}
    for cat in CATEGORIES:
        specs = all_prompts(cat)
        order = rng.permutation(len(specs))
        n_test = max(1, round(len(specs) * TEST_FRACTION))
        out["test"] += [specs[i] for i in sorted(order[:n_test])]
        out["train"] += [specs[i] for i in sorted(order[n_test:])]
    return out


def write_split(directory: str) -> None:
    """Write ``{train,test}.txt`` and ``{train,test}.jsonl`` (prompt, category, atoms)."""
    from pathlib import Path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, specs in make_split().items():
        (d / f"{name}.txt").write_text("".join(s.text + "\n" for s in specs))
        rows = [
            json.dumps({"prompt": s.text, "category": s.category, "atoms": s.atoms()})
            for s in specs
        ]
        (d / f"{name}.jsonl").write_text("\n".join(rows) + "\n")


@cache
def load_split(name: str) -> tuple[PromptSpec, ...]:
    """The shipped prompts of split ``train`` or ``test`` (package data)."""
    if name not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {name!r}")
    path = resources.files("flowdppo") / "assets" / "prompts" / "shapes" / f"{name}.jsonl"
    specs = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        spec = parse_prompt(row["prompt"])
        if spec.category != row["category"]:
            raise ValueError(
                f"{path}: {row['prompt']!r} has category {row['category']!r}, parsed {spec.category!r}"
            )
        specs.append(spec)
    return tuple(specs)


@cache
def split_by_category(name: str) -> Mapping[str, tuple[PromptSpec, ...]]:
    """The prompts of split ``name`` grouped by category: every category a key, in order.
    Read-only, since every caller shares the one cached mapping."""
    specs = load_split(name)
    return MappingProxyType({c: tuple(s for s in specs if s.category == c) for c in CATEGORIES})


def _cells_for(spec: PromptSpec, rng: np.random.Generator) -> list[int]:
    n = sum(g.count for g in spec.groups)
    while True:
        cells = [int(c) for c in rng.choice(NUM_CELLS, size=n, replace=False)]
        if spec.relation is None or _relation_holds(spec.relation, cells[0], cells[1]):
            return cells


def _relation_holds(relation: str, a: int, b: int) -> bool:
    (ra, ca), (rb, cb) = divmod(a, GRID), divmod(b, GRID)
    return {
        "to the left of": ca < cb,
        "to the right of": ca > cb,
        "above": ra < rb,
        "below": ra > rb,
    }[relation]


# What a noisy caption gets wrong, per category (``miscaption``): the compositional detail that
# web alt-text is known to get wrong (counts, relations, which colour goes with which shape).
OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}
MISCAPTIONED = ("two_object", "color_attr", "counting", "position")
NOISE_KINDS = ("detail", "unmentioned")


def miscaption(spec: PromptSpec, rng: np.random.Generator, kind: str = "detail") -> PromptSpec:
    """The spec of a scene that ``spec.text`` would caption wrongly (``kind``, one of
    ``NOISE_KINDS``):

    - ``"detail"``: one compositional detail wrong. counting: one object more or fewer (within
      1..4); position: the opposite relation; color_attr: the two colours swapped; two_object:
      the first object twice. A scene of the result fails ``spec``'s strict check by exactly
      that detail (tested).
    - ``"unmentioned"``: everything the caption says, plus one object it does not mention (a
      uniformly drawn colour and shape, in a free cell): the caption under-describes the image,
      the commonest error of web alt-text. The scene fails the caption's ``exact`` atom, and
      its count atom too when the extra object is of a counted kind; every other atom holds
      (tested).

    Categories outside ``MISCAPTIONED`` are refused: their captions are kept right (the easy
    prompts)."""
    if spec.category not in MISCAPTIONED:
        raise ValueError(
            f"miscaption: category {spec.category!r} is kept right; expected one of {MISCAPTIONED}"
        )
    if kind not in NOISE_KINDS:
        raise ValueError(f"miscaption: kind {kind!r}; expected one of {NOISE_KINDS}")
    if kind == "unmentioned":
        extra = ObjectGroup(int(rng.integers(len(COLORS))), int(rng.integers(len(SHAPES))))
        return PromptSpec(spec.category, (*spec.groups, extra), spec.relation)
    a = spec.groups[0]
    if spec.category == "counting":
        n = a.count - 1 if a.count == 4 or rng.random() < 0.5 else a.count + 1
        return PromptSpec(spec.category, (ObjectGroup(a.color, a.shape, n),))
    if spec.category == "position":
        return PromptSpec(spec.category, spec.groups, OPPOSITE[str(spec.relation)])
    b = spec.groups[1]
    if spec.category == "color_attr":
        groups = (ObjectGroup(b.color, a.shape), ObjectGroup(a.color, b.shape))
        return PromptSpec(spec.category, groups)
    return PromptSpec(spec.category, (ObjectGroup(a.color, a.shape, 2),))  # two_object


def sample_scenes(specs: list[PromptSpec], rng: np.random.Generator) -> Scenes:
    """One random scene per prompt that satisfies it exactly (and contains nothing else)."""
    scenes = Scenes.empty(len(specs))
    for i, spec in enumerate(specs):
        cells = iter(_cells_for(spec, rng))
        for g in spec.groups:
            for _ in range(g.count):
                place_object(scenes, i, next(cells), g.shape, g.color, rng)
    return scenes


if __name__ == "__main__":  # regenerate the shipped split: python -m flowdppo.shapes.prompts DIR
    import sys

    write_split(sys.argv[1] if len(sys.argv) > 1 else "flowdppo/assets/prompts/shapes")
