"""Tests for flowdppo/shapes/score.py: strict and dense rewards, relations, cleanliness gating."""

import numpy as np
import pytest

from flowdppo.shapes.parser import Detection
from flowdppo.shapes.prompts import CATEGORIES, all_prompts, parse_prompt, sample_scenes
from flowdppo.shapes.render import render_uint8
from flowdppo.shapes.score import REL_MARGIN, relation_holds, score_images
from flowdppo.shapes.world import PALETTE

from .helpers import blank, paint

RED, GREEN, BLUE, YELLOW, WHITE = range(5)


def _score(img: np.ndarray, prompt: str):
    s = score_images(img, [parse_prompt(prompt)])
    return float(s.geneval[0]), float(s.tifa[0]), bool(s.clean[0])


def _det(cx: float, cy: float) -> Detection:
    return Detection(RED, 0, cx, cy, 25, (0, 0, 5, 5))


def _mixed_batch(n: int, seed: int):
    """Renders of random prompts, half of them scored against a shuffled (mostly wrong) prompt,
    plus a few noise images."""
    rng = np.random.default_rng(seed)
    prompts = [s for c in CATEGORIES for s in all_prompts(c)]
    specs = [prompts[i] for i in rng.integers(0, len(prompts), size=n)]
    images = render_uint8(sample_scenes(specs, rng), antialias=bool(seed % 2))
    images[: n // 8] = rng.integers(0, 256, size=images[: n // 8].shape, dtype=np.uint8)
    wrong = [specs[i] for i in rng.permutation(n)]
    return images, specs[: n // 2] + wrong[n // 2 :]


def test_rewards_in_range():
    images, specs = _mixed_batch(400, seed=0)
    s = score_images(images, specs)
    for v in (s.geneval, s.tifa, s.object_size):
        assert v.shape == (400,) and v.dtype == np.float32
    assert set(np.unique(s.geneval)) <= {0.0, 1.0}
    assert (s.tifa >= 0).all() and (s.tifa <= 1).all()
    assert (s.geneval <= s.tifa).all()  # strict success implies every atom holds
    assert (s.object_size >= 0).all() and (s.object_size <= 81 / 49).all()
    assert 0 < s.geneval.mean() < 1  # both outcomes occur: the test can fail either way
    assert not s.clean[: 400 // 8].any()  # noise is never clean


def test_batched_equals_unbatched():
    images, specs = _mixed_batch(64, seed=1)
    batched = score_images(images, specs)
    for i in range(64):
        one = score_images(images[i : i + 1], specs[i : i + 1])
        for k in ("geneval", "tifa", "object_size", "clean"):
            assert getattr(one, k)[0] == getattr(batched, k)[i]


def test_correct_hand_built_image_scores_one():
    img = blank()
    paint(img[0], "circle", RED, 6, 1, 1)  # cell (0, 0)
    paint(img[0], "square", BLUE, 5, 1, 9)  # cell (0, 1)
    assert _score(img, "a red circle and a blue square") == (1.0, 1.0, True)
    assert _score(img, "a red circle to the left of a blue square") == (1.0, 1.0, True)


@pytest.mark.parametrize(
    ("prompt", "tifa"),
    [
        ("a red circle and a blue square", 1 / 3),  # blue square missing, so not exact
        ("two red circles", 1 / 3),  # present holds; count and exact fail
        ("a red circle to the left of a blue triangle", 1 / 4),  # present; missing, relation, exact
        ("a green circle", 0.0),
    ],
)
def test_tifa_is_fraction_of_atoms_with_one_object_missing(prompt, tifa):
    img = blank()
    paint(img[0], "circle", RED, 6, 1, 1)
    assert _score(img, prompt) == (0.0, pytest.approx(tifa, abs=1e-7), True)


def test_count_must_be_exact():
    img = blank()
    for cell in range(3):
        paint(img[0], "triangle", YELLOW, 5, 1, 8 * cell + 1)
    assert _score(img, "three yellow triangles") == (1.0, 1.0, True)
    # present holds; count (3 != 2) and exact fail
    assert _score(img, "two yellow triangles") == (0.0, pytest.approx(1 / 3), True)
    assert _score(img, "four yellow triangles") == (0.0, pytest.approx(1 / 3), True)


def test_extra_objects_fail_exact():
    """GenEval passes "a red circle" with several; our ``exact`` atom does not (RL exploits it)."""
    img = blank()
    paint(img[0], "circle", RED, 6, 1, 1)
    paint(img[0], "circle", RED, 6, 1, 9)
    assert _score(img, "a red circle") == (0.0, 0.5, True)  # present, not exact
    paint(img[0], "square", BLUE, 5, 9, 1)
    assert _score(img, "two red circles") == (0.0, pytest.approx(2 / 3), True)  # an extra square


def test_relation_margin_is_strict_four_pixels():
    a = _det(10.0, 10.0)
    assert relation_holds("to the left of", a, _det(10.0 + REL_MARGIN + 0.01, 10.0))
    assert not relation_holds("to the left of", a, _det(10.0 + REL_MARGIN, 10.0))
    assert relation_holds("to the right of", a, _det(10.0 - REL_MARGIN - 0.01, 10.0))
    assert not relation_holds("to the right of", a, _det(10.0 - REL_MARGIN, 10.0))
    # y grows downwards: "above" means a smaller y
    assert relation_holds("above", a, _det(10.0, 14.5))
    assert not relation_holds("above", a, _det(10.0, 14.0))
    assert relation_holds("below", a, _det(10.0, 5.5))
    assert not relation_holds("below", a, _det(10.0, 6.0))
    with pytest.raises(ValueError, match="relation: unknown 'near'"):
        relation_holds("near", a, a)


def test_relations_on_images():
    img = blank()
    paint(img[0], "circle", RED, 5, 1, 1)  # cell (0, 0)
    paint(img[0], "triangle", BLUE, 5, 9, 1)  # cell (1, 0): same column, one row down
    assert _score(img, "a red circle above a blue triangle") == (1.0, 1.0, True)
    assert _score(img, "a blue triangle below a red circle") == (1.0, 1.0, True)
    # same column: left/right fail; presence and exact still count
    assert _score(img, "a red circle to the left of a blue triangle") == (
        0.0,
        pytest.approx(3 / 4),
        True,
    )
    assert _score(img, "a red circle below a blue triangle") == (0.0, pytest.approx(3 / 4), True)


def test_relation_holds_for_some_pair():
    img = blank()
    paint(img[0], "circle", RED, 5, 1, 17)  # red circles in cells (0, 2) and (0, 0)
    paint(img[0], "circle", RED, 5, 1, 1)
    paint(img[0], "square", GREEN, 5, 1, 9)  # green square in cell (0, 1)
    # the relation holds for some pair; the second red circle makes the scene inexact
    assert _score(img, "a red circle to the left of a green square") == (0.0, 0.75, True)
    assert _score(img, "a red circle to the right of a green square") == (0.0, 0.75, True)


def test_empty_image_scores_zero():
    for prompt in ("a red circle", "three white squares", "a red circle above a blue square"):
        assert _score(blank(), prompt) == (0.0, 0.0, True)


def test_speckle_with_correct_objects_scores_zero():
    img = blank()
    paint(img[0], "circle", RED, 6, 1, 1)
    paint(img[0], "square", BLUE, 5, 1, 9)
    assert _score(img, "a red circle and a blue square") == (1.0, 1.0, True)
    rng = np.random.default_rng(0)
    for y, x in rng.integers(16, 32, size=(6, 2)):  # specks in the empty lower half
        img[0, y, x] = PALETTE[rng.integers(5)]
    assert _score(img, "a red circle and a blue square") == (0.0, 0.0, False)


def test_object_size_is_mean_area_over_49():
    img = blank()
    paint(img[0], "square", WHITE, 7, 0, 0)
    paint(img[0], "square", WHITE, 5, 0, 8)
    s = score_images(img, [parse_prompt("a white square")])
    assert s.object_size[0] == pytest.approx((49 + 25) / 2 / 49, abs=1e-7)
    assert score_images(blank(), [parse_prompt("a white square")]).object_size[0] == 0.0


def test_prompt_count_must_match_images():
    with pytest.raises(ValueError, match="specs: 2 prompts for 1 images"):
        score_images(blank(), [parse_prompt("a red circle")] * 2)
