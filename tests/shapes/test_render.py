"""Tests for flowdppo/shapes/render.py and the geometry of flowdppo/shapes/world.py."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowdppo.shapes.prompts import CATEGORIES, all_prompts, sample_scenes
from flowdppo.shapes.render import render, render_uint8, to_tensor, to_uint8
from flowdppo.shapes.world import (
    BACKGROUND,
    CELL,
    GRID,
    NUM_CELLS,
    PALETTE,
    SHAPES,
    SIZES,
    Scenes,
    place_object,
    shape_mask,
)

# Hand-drawn from the outlines in world.shape_mask's docstring (pixel centres inside or not).
EXPECTED_MASKS = {
    ("circle", 5): ["01110", "11111", "11111", "11111", "01110"],
    ("triangle", 5): ["00100", "01110", "01110", "11111", "11111"],
    ("square", 5): ["11111"] * 5,
    ("circle", 6): ["011110", "111111", "111111", "111111", "111111", "011110"],
    ("triangle", 6): ["001100", "001100", "011110", "011110", "111111", "111111"],
}


def _rows(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows])


@pytest.mark.parametrize(("shape", "size"), list(EXPECTED_MASKS))
def test_shape_masks_match_hand_drawn(shape, size):
    np.testing.assert_array_equal(shape_mask(shape, size), _rows(EXPECTED_MASKS[(shape, size)]))


def test_shape_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape: unknown 'hexagon'"):
        shape_mask("hexagon", 5)
    with pytest.raises(ValueError, match="size: 8 not in"):
        shape_mask("circle", 8)


def _random_full_scenes(n: int, seed: int) -> Scenes:
    """n scenes with an object of random shape/colour in every one of the 16 cells."""
    rng = np.random.default_rng(seed)
    scenes = Scenes.empty(n)
    for i in range(n):
        for cell in range(NUM_CELLS):
            place_object(scenes, i, cell, int(rng.integers(3)), int(rng.integers(5)), rng)
    return scenes


def _naive_render(scenes: Scenes) -> np.ndarray:
    """Object-by-object reference renderer: background, then each mask painted at its place."""
    out = np.empty((len(scenes), 32, 32, 3), dtype=np.uint8)
    for i in range(len(scenes)):
        out[i] = BACKGROUND
        for cell in range(NUM_CELLS):
            if scenes.shape[i, cell] < 0:
                continue
            row, col = divmod(cell, GRID)
            y = row * CELL + int(scenes.oy[i, cell])
            x = col * CELL + int(scenes.ox[i, cell])
            size = int(scenes.size[i, cell])
            mask = shape_mask(SHAPES[scenes.shape[i, cell]], size)
            out[i, y : y + size, x : x + size][mask] = PALETTE[scenes.color[i, cell]]
    return out


def test_render_single_object_pixels():
    scenes = Scenes.empty(1)
    # a red 5-px square in cell 5 (row 1, col 1) at offset (oy, ox) = (1, 2)
    scenes.shape[0, 5], scenes.color[0, 5], scenes.size[0, 5] = 1, 0, 5
    scenes.oy[0, 5], scenes.ox[0, 5] = 1, 2
    img = render_uint8(scenes)[0]
    expected = np.broadcast_to(BACKGROUND, (32, 32, 3)).copy()
    expected[9:14, 10:15] = [220, 40, 40]
    np.testing.assert_array_equal(img, expected)


def test_vectorised_render_equals_naive_loop():
    rng = np.random.default_rng(3)
    specs = [s for cat in CATEGORIES for s in all_prompts(cat)[:20]]
    for scenes in (sample_scenes(specs, rng), _random_full_scenes(50, seed=4)):
        np.testing.assert_array_equal(render_uint8(scenes), _naive_render(scenes))


def test_same_seed_same_images():
    specs = [s for cat in CATEGORIES for s in all_prompts(cat)[:10]]
    a = render(sample_scenes(specs, np.random.default_rng(7)))
    b = render(sample_scenes(specs, np.random.default_rng(7)))
    c = render(sample_scenes(specs, np.random.default_rng(8)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    aa = render(sample_scenes(specs, np.random.default_rng(7)), antialias=True)
    torch.testing.assert_close(
        aa, render(sample_scenes(specs, np.random.default_rng(7)), antialias=True)
    )


def test_objects_never_touch_across_cells():
    scenes = _random_full_scenes(200, seed=5)
    img = render_uint8(scenes)
    fg = (img != BACKGROUND).any(-1)  # [N, 32, 32]
    # the last row and column of every cell are background: a 1-px gap to the next cell
    assert not fg[:, CELL - 1 :: CELL, :].any()
    assert not fg[:, :, CELL - 1 :: CELL].any()
    struct = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal contact counts as touching
    for i in range(len(scenes)):
        labels, n = ndimage.label(fg[i], structure=struct)
        assert n == NUM_CELLS  # 16 objects, 16 separate components
        for sl in ndimage.find_objects(labels):
            assert sl[0].start // CELL == (sl[0].stop - 1) // CELL  # inside one cell row
            assert sl[1].start // CELL == (sl[1].stop - 1) // CELL  # and one cell column


def test_offsets_and_sizes_stay_in_range():
    scenes = _random_full_scenes(200, seed=6)
    assert set(np.unique(scenes.size)) == set(SIZES)
    assert (scenes.oy >= 0).all() and (scenes.ox >= 0).all()
    assert (scenes.oy + scenes.size <= CELL - 1).all() and (
        scenes.ox + scenes.size <= CELL - 1
    ).all()


def test_tensor_conversions_round_trip():
    img = render_uint8(_random_full_scenes(4, seed=9))
    t = to_tensor(img)
    assert t.shape == (4, 3, 32, 32) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    np.testing.assert_array_equal(to_uint8(t), img)
    # out-of-range values are clamped, not wrapped
    np.testing.assert_array_equal(to_uint8(torch.full((1, 3, 1, 1), 1.7))[0, 0, 0], [255] * 3)
    np.testing.assert_array_equal(to_uint8(torch.full((1, 3, 1, 1), -0.2))[0, 0, 0], [0] * 3)


def test_antialias_blends_right_and_down_neighbours():
    scenes = Scenes.empty(1)
    scenes.shape[0, 0], scenes.color[0, 0], scenes.size[0, 0] = 1, 4, 5  # white 5-px square
    hard, soft = render_uint8(scenes)[0].astype(float), render_uint8(scenes, antialias=True)[0]
    # 0.75 * own + 0.125 * right + 0.125 * down, rounded
    y, x = 4, 4  # the square's bottom-right pixel: right and down are background
    expected = np.rint(0.75 * hard[y, x] + 0.125 * hard[y, x + 1] + 0.125 * hard[y + 1, x])
    np.testing.assert_array_equal(soft[y, x], expected)
    np.testing.assert_array_equal(soft[2, 2], hard[2, 2])  # interior unchanged
