"""benchmarks/shapes_failures.py: each failure class on renders of hand-made scenes."""

from __future__ import annotations

import numpy as np
from benchmark_modules import load_benchmark

from flowdppo.shapes.parser import parse_images
from flowdppo.shapes.prompts import parse_prompt
from flowdppo.shapes.render import render_uint8
from flowdppo.shapes.world import COLORS, SHAPES, Scenes, place_object

failures = load_benchmark("shapes_failures")


def _classify(prompt: str, objects: list[tuple[int, str, str]]) -> str:
    """objects: (cell, colour, shape); cells 0..15, row-major on the 4×4 grid."""
    scenes = Scenes.empty(1)
    rng = np.random.default_rng(0)
    for cell, colour, shape in objects:
        place_object(scenes, 0, cell, SHAPES.index(shape), COLORS.index(colour), rng)
    (parsed,) = parse_images(render_uint8(scenes))
    return failures.classify(parse_prompt(prompt), parsed)


def test_each_failure_class():
    two = "a red circle and a red square"
    assert _classify(two, [(0, "red", "circle"), (10, "red", "square")]) == "ok"
    assert _classify(two, [(0, "red", "circle"), (10, "red", "circle")]) == "same object twice"
    assert _classify(two, [(5, "red", "circle")]) == "count 1 (want 2)"
    assert _classify(two, [(0, "red", "circle"), (10, "blue", "square")]) == (
        "wrong colour or shape"
    )
    pos = "a red circle to the left of a blue square"
    assert _classify(pos, [(4, "red", "circle"), (7, "blue", "square")]) == "ok"
    assert _classify(pos, [(7, "red", "circle"), (4, "blue", "square")]) == "wrong relation"
    count = "three yellow triangles"
    assert _classify(count, [(c, "yellow", "triangle") for c in (0, 5, 10, 15)]) == (
        "count 4 (want 3)"
    )
