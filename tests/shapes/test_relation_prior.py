"""benchmarks/shapes_relation_prior.py: the colour decomposition and the signed separation."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_modules import load_benchmark

from flowdppo.shapes.prompts import OPPOSITE, parse_prompt
from flowdppo.shapes.world import BACKGROUND, PALETTE

prior = load_benchmark("shapes_relation_prior")


def test_colour_weights_recover_a_known_mixture():
    rng = np.random.default_rng(0)
    wa, wb = rng.uniform(0, 0.5, (2, 32, 32))
    bg, ca, cb = BACKGROUND / 255, PALETTE[0] / 255, PALETTE[2] / 255
    img = bg[:, None, None] + wa * (ca - bg)[:, None, None] + wb * (cb - bg)[:, None, None]
    got_a, got_b = prior.colour_weights(img, 0, 2)
    np.testing.assert_allclose(got_a, wa, atol=1e-9)
    np.testing.assert_allclose(got_b, wb, atol=1e-9)


def test_separation_of_the_world_prior_has_the_closed_form_size_and_sign():
    # Cells uniform given the relation: E[col A] = 2/3, E[col B] = 7/3 (of 0..3), 8 px per cell,
    # so the colour centroids are 8 · 5/3 ≈ 13.3 px apart (shapes jitter inside their cell).
    left = parse_prompt("a red circle to the left of a blue square")
    right = parse_prompt("a red circle to the right of a blue square")
    mean_left = prior.world_mean(left, 2000, 0)
    assert prior.separation(mean_left, left) == pytest.approx(8 * 5 / 3, abs=0.7)
    # The same image read with the other relation: the same size, the other sign.
    assert prior.separation(mean_left, right) == pytest.approx(-prior.separation(mean_left, left))
    below = parse_prompt("a red circle below a blue square")
    assert prior.separation(prior.world_mean(below, 2000, 1), below) == pytest.approx(
        8 * 5 / 3, abs=0.7
    )
    # A layout that ignores the relation (left and right mixed) scores about 0.
    mixed = (mean_left + prior.world_mean(right, 2000, 2)) / 2
    assert abs(prior.separation(mixed, left)) < 0.7


@pytest.mark.parametrize("relation", list(prior.AXIS))
def test_opposite_relation_mirrors_the_world_prior(relation):
    # prompts.OPPOSITE (the benchmark's mirror, caption noise's flip): the world's mean for the
    # opposite prompt, read with the original relation, points the other way by the closed form.
    spec = parse_prompt(f"a red circle {relation} a blue square")
    mirror = parse_prompt(f"a red circle {OPPOSITE[relation]} a blue square")
    assert OPPOSITE[OPPOSITE[relation]] == relation != OPPOSITE[relation]
    sep = prior.separation(prior.world_mean(mirror, 1000, 3), spec)
    assert sep == pytest.approx(-8 * 5 / 3, abs=1.0)
