"""Tests for flowdppo/shapes/prompts.py: grammar, atoms, categories, the shipped split, scenes."""

import json
from collections import Counter
from importlib import resources

import numpy as np
import pytest

from flowdppo.shapes.parser import parse_images
from flowdppo.shapes.prompts import (
    CATEGORIES,
    MISCAPTIONED,
    OPPOSITE,
    ObjectGroup,
    all_prompts,
    load_split,
    make_split,
    miscaption,
    parse_prompt,
    sample_scenes,
    split_by_category,
)
from flowdppo.shapes.render import render, to_uint8
from flowdppo.shapes.score import check_atoms, score_images
from flowdppo.shapes.world import COLORS, GRID, SHAPES

# One hand-written example per category: (text, category, groups as (colour, shape, count) indices,
# relation, atoms). Colours: red 0, green 1, blue 2, yellow 3, white 4; shapes: circle 0, square 1,
# triangle 2.
EXAMPLES = [
    (
        "a red circle",
        "single_object",
        [(0, 0, 1)],
        None,
        [("present", "red", "circle"), ("exact",)],
    ),
    (
        "a red circle and a blue circle",
        "colors",
        [(0, 0, 1), (2, 0, 1)],
        None,
        [("present", "red", "circle"), ("present", "blue", "circle"), ("exact",)],
    ),
    (
        "a white square and a white triangle",
        "two_object",
        [(4, 1, 1), (4, 2, 1)],
        None,
        [("present", "white", "square"), ("present", "white", "triangle"), ("exact",)],
    ),
    (
        "a red square and a green circle",
        "color_attr",
        [(0, 1, 1), (1, 0, 1)],
        None,
        [("present", "red", "square"), ("present", "green", "circle"), ("exact",)],
    ),
    (
        "three yellow triangles",
        "counting",
        [(3, 2, 3)],
        None,
        [("present", "yellow", "triangle"), ("count", "yellow", "triangle", 3), ("exact",)],
    ),
    (
        "a red circle to the left of a blue triangle",
        "position",
        [(0, 0, 1), (2, 2, 1)],
        "to the left of",
        [
            ("present", "red", "circle"),
            ("present", "blue", "triangle"),
            ("relation", "to the left of"),
            ("exact",),
        ],
    ),
    (
        "a green square below a white circle",
        "position",
        [(1, 1, 1), (4, 0, 1)],
        "below",
        [
            ("present", "green", "square"),
            ("present", "white", "circle"),
            ("relation", "below"),
            ("exact",),
        ],
    ),
]


def _atom_tuple(atom: dict) -> tuple:
    if atom["kind"] == "exact":
        assert set(atom) == {"kind"}
        return ("exact",)
    if atom["kind"] == "relation":
        assert (atom["a"], atom["b"]) == (0, 1)
        return ("relation", atom["relation"])
    if atom["kind"] == "count":
        return ("count", atom["color"], atom["shape"], atom["n"])
    return ("present", atom["color"], atom["shape"])


@pytest.mark.parametrize(("text", "category", "groups", "relation", "atoms"), EXAMPLES)
def test_examples_parse_into_expected_atoms(text, category, groups, relation, atoms):
    spec = parse_prompt(text)
    assert spec.category == category
    assert spec.groups == tuple(ObjectGroup(*g) for g in groups)
    assert spec.relation == relation
    assert [_atom_tuple(a) for a in spec.atoms()] == atoms
    assert spec.text == text


def test_whitespace_and_case_are_normalised():
    assert parse_prompt("  Four  WHITE circles ") == parse_prompt("four white circles")


def test_category_sizes_by_hand():
    # 15 objects (5 colours x 3 shapes); ordered pairs: same shape 3*5*4, same colour 5*3*2,
    # both differ 15*14 - 60 - 30; counting 3 numbers x 15; position 15*14 pairs x 4 relations.
    expected = {
        "single_object": 15,
        "colors": 60,
        "two_object": 30,
        "color_attr": 120,
        "counting": 45,
        "position": 840,
    }
    assert {c: len(all_prompts(c)) for c in CATEGORIES} == expected


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_prompt_round_trips(category):
    specs = all_prompts(category)
    assert len({s.text for s in specs}) == len(specs)
    for spec in specs:
        assert spec.category == category
        assert parse_prompt(spec.text) == spec


def test_shipped_split_equals_regenerated_split():
    split = make_split()
    assert split == make_split()  # deterministic
    d = resources.files("flowdppo") / "assets" / "prompts" / "shapes"
    for name, specs in split.items():
        assert (d / f"{name}.txt").read_text() == "".join(s.text + "\n" for s in specs)
        rows = [json.loads(line) for line in (d / f"{name}.jsonl").read_text().splitlines()]
        expected = [{"prompt": s.text, "category": s.category, "atoms": s.atoms()} for s in specs]
        assert rows == expected
        assert list(load_split(name)) == specs


def test_split_is_disjoint_and_covers_everything():
    split = make_split()
    train, test = {s.text for s in split["train"]}, {s.text for s in split["test"]}
    assert not train & test
    every = {s.text for c in CATEGORIES for s in all_prompts(c)}
    assert train | test == every
    # a third of each category (rounded) is test
    expected_test = {"single_object": 5, "colors": 20, "two_object": 10, "color_attr": 40}
    expected_test |= {"counting": 15, "position": 280}
    assert Counter(s.category for s in split["test"]) == expected_test
    assert make_split(seed=1) != split  # the seed matters


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a purple circle", "unknown colour 'purple'"),
        ("a red hexagon", "unknown shape 'hexagon'"),
        ("five red circles", "count 'five' out of range"),
        ("one red circle", "count 'one' out of range"),
        ("two red circle", "plural shape expected"),
        ("", "expected '<a|two|three|four> <color> <shape>'"),
        ("hello world", "expected '<a|two|three|four> <color> <shape>'"),
        ("a red circle and a blue square and a green triangle", "at most two object phrases"),
        ("two red circles and a blue square", "two-object prompts use single objects"),
        ("a red circle and a red circle", "the two objects must differ"),
        ("two red circles above a blue square", "position prompts relate single objects"),
        ("a red circle above a red circle", "a relation needs two different objects"),
        ("a red circle next to a blue square", "expected '<a|two|three|four> <color> <shape>'"),
    ],
)
def test_bad_prompts_raise_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(text)


def test_bad_category_and_split_names():
    with pytest.raises(ValueError, match="category: unknown 'bogus'"):
        all_prompts("bogus")
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', got 'val'"):
        load_split("val")


def test_sampled_scenes_satisfy_their_prompts_exactly():
    rng = np.random.default_rng(0)
    specs = [s for c in CATEGORIES for s in all_prompts(c)]
    scenes = sample_scenes(specs, rng)
    for i, spec in enumerate(specs):
        occupied = np.flatnonzero(scenes.shape[i] >= 0)
        got = Counter((int(scenes.color[i, c]), int(scenes.shape[i, c])) for c in occupied)
        assert got == Counter({(g.color, g.shape): g.count for g in spec.groups})
        if spec.relation is not None:
            a, b = (
                next(
                    c
                    for c in occupied
                    if scenes.color[i, c] == g.color and scenes.shape[i, c] == g.shape
                )
                for g in spec.groups
            )
            (ra, ca), (rb, cb) = divmod(int(a), GRID), divmod(int(b), GRID)
            holds = {
                "to the left of": ca < cb,
                "to the right of": ca > cb,
                "above": ra < rb,
                "below": ra > rb,
            }
            assert holds[spec.relation]


def test_split_by_category_partitions_the_split_in_order() -> None:
    from flowdppo.shapes.prompts import split_by_category

    for name in ("train", "test"):
        groups = split_by_category(name)
        assert list(groups) == list(CATEGORIES)
        assert all(s.category == c for c, specs in groups.items() for s in specs)
        flat = sorted(s.text for specs in groups.values() for s in specs)
        assert flat == sorted(s.text for s in load_split(name))
        with pytest.raises(TypeError):  # the cached mapping is shared: no caller may change it
            groups["position"] = ()  # type: ignore[index]


@pytest.mark.parametrize("category", MISCAPTIONED)
def test_miscaption_gets_exactly_one_compositional_detail_wrong(category):
    specs = split_by_category("train")[category]
    rng = np.random.default_rng(0)
    wrong = [miscaption(s, rng) for s in specs]
    for s, w in zip(specs, wrong, strict=True):
        if category == "counting":  # one more or one fewer, within the world's 1..4
            (a,), (b,) = s.groups, w.groups
            assert (a.color, a.shape) == (b.color, b.shape) and abs(a.count - b.count) == 1
            assert 1 <= b.count <= 4
        elif category == "position":
            assert w.groups == s.groups and w.relation == OPPOSITE[s.relation]
            assert OPPOSITE[w.relation] == s.relation
        elif category == "color_attr":  # the shapes stay, the colours change places
            a, b = s.groups
            assert [(g.color, g.shape) for g in w.groups] == [
                (b.color, a.shape),
                (a.color, b.shape),
            ]
        else:  # two_object: the first object twice
            assert w.groups == (ObjectGroup(s.groups[0].color, s.groups[0].shape, 2),)
    if category == "counting":  # both directions occur
        assert {
            w.groups[0].count - s.groups[0].count for s, w in zip(specs, wrong, strict=True)
        } == {-1, 1}
    # A render of the wrong scene passes its own spec and fails the caption's strict check.
    images = to_uint8(render(sample_scenes(wrong, rng)))
    assert score_images(images, wrong).geneval.all()
    assert not score_images(images, list(specs)).geneval.any()


@pytest.mark.parametrize("category", MISCAPTIONED)
def test_unmentioned_adds_one_object_the_caption_does_not_name(category):
    specs = split_by_category("train")[category] * 4  # enough draws to see every extra object
    rng = np.random.default_rng(1)
    wrong = [miscaption(s, rng, "unmentioned") for s in specs]
    extras = set()
    for s, w in zip(specs, wrong, strict=True):
        # Everything the caption says stays (groups, relation), and one object is added.
        assert w.groups[:-1] == s.groups and w.relation == s.relation
        assert w.groups[-1].count == 1
        extras.add((w.groups[-1].color, w.groups[-1].shape))
    assert len(extras) == len(COLORS) * len(SHAPES)  # any colour and shape is drawn
    images = to_uint8(render(sample_scenes(wrong, rng)))
    parsed = parse_images(images)
    for s, w, p in zip(specs, wrong, parsed, strict=True):
        atoms = check_atoms(s, p)
        # The render holds one object more than the caption names: the caption's "exact" atom
        # fails; its other atoms hold unless the extra object is one of a counted kind.
        assert len(p.objects) == sum(g.count for g in s.groups) + 1
        assert not atoms[-1]
        counted = any(
            (g.color, g.shape) == (w.groups[-1].color, w.groups[-1].shape) for g in s.groups
        )
        assert all(atoms[:-1]) or counted
    assert not score_images(images, list(specs)).geneval.any()


def test_unknown_noise_kind_is_refused():
    with pytest.raises(ValueError, match="unmentioned"):
        miscaption(split_by_category("train")["counting"][0], np.random.default_rng(0), "swap")


@pytest.mark.parametrize("category", ["single_object", "colors"])
def test_easy_prompts_are_never_miscaptioned(category):
    with pytest.raises(ValueError, match="kept right"):
        miscaption(split_by_category("train")[category][0], np.random.default_rng(0))
