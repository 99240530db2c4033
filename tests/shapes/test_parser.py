"""Tests for flowdppo/shapes/parser.py: exact on renders, and the hand-built hard cases."""

from collections import Counter

import numpy as np
import pytest

from flowdppo.shapes.parser import (
    EDGE_TOLERANCE,
    OFF_PALETTE,
    assign_colors,
    classify,
    parse_images,
)
from flowdppo.shapes.prompts import CATEGORIES, all_prompts, sample_scenes
from flowdppo.shapes.render import render_uint8
from flowdppo.shapes.score import score_images
from flowdppo.shapes.world import (
    CELL,
    GRID,
    NUM_CELLS,
    PALETTE,
    SHAPES,
    SIZES,
    Scenes,
    place_object,
)

from .helpers import blank, paint

RED, GREEN, BLUE, YELLOW, WHITE = range(5)


def _category_scenes(category: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts = all_prompts(category)
    specs = [prompts[i] for i in rng.integers(0, len(prompts), size=n)]
    return specs, sample_scenes(specs, rng)


def _truth(scenes: Scenes, i: int) -> Counter:
    cells = np.flatnonzero(scenes.shape[i] >= 0)
    return Counter((int(scenes.color[i, c]), int(scenes.shape[i, c]), int(c)) for c in cells)


def _found(parsed) -> Counter:
    return Counter(
        (o.color, o.shape, int(o.cy // CELL) * GRID + int(o.cx // CELL)) for o in parsed.objects
    )


@pytest.mark.parametrize("category", CATEGORIES)
def test_strict_score_on_renders_is_exact(category):
    specs, scenes = _category_scenes(category, 500, seed=CATEGORIES.index(category))
    scores = score_images(render_uint8(scenes), specs)
    assert scores.clean.all()
    assert scores.geneval.mean() >= 0.995  # the spec's bar; in fact exactly 1
    assert scores.geneval.min() == 1.0


def test_parser_recovers_every_object_of_full_scenes():
    rng = np.random.default_rng(11)
    scenes = Scenes.empty(100)
    for i in range(100):
        for cell in range(NUM_CELLS):
            place_object(scenes, i, cell, int(rng.integers(3)), int(rng.integers(5)), rng)
    for i, p in enumerate(parse_images(render_uint8(scenes))):
        assert p.clean
        assert _found(p) == _truth(scenes, i)


@pytest.mark.parametrize("category", CATEGORIES)
def test_antialiased_renders_stay_above_99_percent(category):
    specs, scenes = _category_scenes(category, 300, seed=100 + CATEGORIES.index(category))
    scores = score_images(render_uint8(scenes, antialias=True), specs)
    assert scores.geneval.mean() >= 0.99


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_classify_world_masks(shape, size):
    from flowdppo.shapes.world import shape_mask

    assert classify(shape_mask(shape, size)) == SHAPES.index(shape)


def test_empty_image_is_clean_with_no_objects():
    (p,) = parse_images(blank())
    assert p.clean and p.objects == [] and p.unknown_blobs == 0 and p.stray_pixels == 0


def test_touching_same_colour_objects_merge_into_an_unknown_blob():
    img = blank()
    paint(img[0], "square", RED, 5, 2, 2)
    paint(img[0], "square", RED, 5, 2, 7)  # shares an edge: one 5x10 component
    (p,) = parse_images(img)
    assert p.objects == [] and p.unknown_blobs == 1 and not p.clean
    # diagonal contact merges too (8-connectivity)
    img = blank()
    paint(img[0], "square", RED, 5, 2, 2)
    paint(img[0], "square", RED, 5, 7, 7)
    (p,) = parse_images(img)
    assert p.objects == [] and p.unknown_blobs == 1 and not p.clean


def test_touching_different_colours_stay_two_objects():
    img = blank()
    paint(img[0], "square", RED, 5, 2, 2)
    paint(img[0], "square", BLUE, 5, 2, 7)
    (p,) = parse_images(img)
    assert sorted((o.color, o.shape) for o in p.objects) == [(RED, 1), (BLUE, 1)] and p.clean


def test_tiny_object_is_not_recognised():
    img = blank()
    img[0, 10:13, 10:13] = PALETTE[GREEN]  # 3x3 = 9 px: above speck size, below the 4-px side
    (p,) = parse_images(img)
    assert p.objects == [] and p.unknown_blobs == 1 and not p.clean


def test_colour_near_miss_stays_assigned_far_miss_is_off_palette():
    img = blank()
    paint(img[0], "square", RED, 6, 1, 1)
    img[0, 3, 3] = [250, 20, 55]  # 30+20+15 off red: distance ~40 < OFF_PALETTE
    img[0, 20, 20] = [130, 40, 135]  # ~130 from red, blue and background: off-palette
    assert np.linalg.norm(img[0, 3, 3].astype(float) - PALETTE[RED]) < OFF_PALETTE
    idx = assign_colors(img)
    assert idx[0, 3, 3] == RED and idx[0, 20, 20] == 5 and idx[0, 0, 0] == -1
    (p,) = parse_images(img)
    assert [(o.color, o.shape, o.area) for o in p.objects] == [(RED, 1, 36)]
    assert p.stray_pixels == 1 and not p.clean  # the far pixel stands alone
    img[0, 20, 20] = [40, 40, 40]
    assert parse_images(img)[0].clean


def test_isolated_specks_make_an_image_unclean_but_objects_stay():
    img = blank()
    paint(img[0], "circle", YELLOW, 7, 0, 0)
    img[0, 20, 25] = PALETTE[YELLOW]
    img[0, 28, 3] = PALETTE[WHITE]
    (p,) = parse_images(img)
    assert [(o.color, o.shape) for o in p.objects] == [(YELLOW, 0)]
    assert p.stray_pixels == 2 and p.unknown_blobs == 0 and not p.clean


def test_edge_pixels_are_tolerated_up_to_the_limit():
    def with_edge_pixels(k: int) -> np.ndarray:
        img = blank()
        paint(img[0], "square", BLUE, 7, 1, 1)  # box rows/cols 1..7; its 1-px ring is 0 and 8
        for j in range(k):
            img[0, 8, j] = [130, 40, 135]  # off-palette, in the ring under the bottom edge
        return img

    assert parse_images(with_edge_pixels(EDGE_TOLERANCE))[0].clean
    p = parse_images(with_edge_pixels(EDGE_TOLERANCE + 1))[0]
    assert p.edge_pixels == EDGE_TOLERANCE + 1 and p.stray_pixels == 0 and not p.clean


def test_centroid_and_box_of_a_square():
    img = blank()
    paint(img[0], "square", WHITE, 5, 9, 18)
    (o,) = parse_images(img)[0].objects
    assert (o.cx, o.cy, o.area, o.box) == (20.0, 11.0, 25, (9, 18, 14, 23))


def test_batch_does_not_connect_across_images():
    img = blank(2)
    paint(img[0], "square", RED, 5, 27, 2)  # bottom rows of image 0
    paint(img[1], "square", RED, 5, 0, 2)  # top rows of image 1
    p0, p1 = parse_images(img)
    assert len(p0.objects) == 1 and len(p1.objects) == 1 and p0.clean and p1.clean


def test_rejects_float_images():
    with pytest.raises(ValueError, match="images: expected a uint8"):
        parse_images(np.zeros((1, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="images: expected shape"):
        parse_images(np.zeros((32, 32, 3), dtype=np.uint8))
