"""Tests for flowdppo/shapes/metrics.py: Fréchet distance and group diversity."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from flowdppo.shapes.metrics import frechet_distance, group_diversity, shapes_diversity, shapes_fd
from flowdppo.shapes.prompts import load_split, sample_scenes
from flowdppo.shapes.render import render


def _exact_gaussian_sample(mu: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n points whose sample mean is exactly mu and unbiased sample covariance exactly cov."""
    x = np.random.default_rng(seed).standard_normal((n, len(mu)))
    x -= x.mean(0)
    white = (
        x @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(x, rowvar=False)))).T
    )  # cov = I
    return white @ np.linalg.cholesky(cov).T + mu


def test_fd_closed_form_for_diagonal_gaussians():
    # diagonal covariances commute: FD = ||mu_a - mu_b||^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.5])
    var_a, var_b = np.array([4.0, 1.0, 0.25, 9.0]), np.array([1.0, 9.0, 0.25, 4.0])
    a = _exact_gaussian_sample(mu_a, np.diag(var_a), 400, seed=0)
    b = _exact_gaussian_sample(mu_b, np.diag(var_b), 300, seed=1)
    # by hand: (1 + 0 + 4 + 0.25) + ((2-1)^2 + (1-3)^2 + 0 + (3-2)^2) = 5.25 + 6
    assert frechet_distance(a, b) == pytest.approx(11.25, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(11.25, rel=1e-9)


def test_fd_is_invariant_to_rotations():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((500, 6)), 2.0 * rng.standard_normal((400, 6)) + 0.5
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))  # a random orthogonal matrix
    # the non-diagonal case: rotated covariances no longer commute with the axes
    assert frechet_distance(a @ q, b @ q) == pytest.approx(frechet_distance(a, b), rel=1e-8)


def test_fd_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(x, x)) < 1e-8


def test_fd_with_singular_covariance():
    # a constant feature: variances (0, 4) vs (1, 4) → FD = (0 - 1)^2 = 1
    a = _exact_gaussian_sample(np.zeros(1), np.eye(1) * 4, 200, seed=3)
    b = _exact_gaussian_sample(np.zeros(2), np.diag([1.0, 4.0]), 200, seed=4)
    a = np.concatenate([np.zeros((200, 1)), a], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that the product is singular
        assert frechet_distance(a, b) == pytest.approx(1.0, abs=1e-5)


def test_fd_rejects_bad_inputs():
    with pytest.raises(ValueError, match="feats_a: expected a 2-D"):
        frechet_distance(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="feats_b: feature dim 3 != feats_a's 2"):
        frechet_distance(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="feats_b: need at least 2 rows"):
        frechet_distance(np.ones((4, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="feats_a: contains non-finite"):
        frechet_distance(np.full((4, 2), np.nan), np.ones((4, 2)))


def test_group_diversity_by_hand():
    feats = np.array([[0, 0], [3, 4], [0, 0], [1, 0], [0, 1]], dtype=float)
    ids = np.array([7, 7, 2, 2, 2])
    # group 7: one pair at distance 5; group 2: distances 1, 1, sqrt(2)
    expected = (5 + (2 + math.sqrt(2)) / 3) / 2
    assert group_diversity(feats, ids) == pytest.approx(expected, rel=1e-12)
    assert group_diversity(torch.tensor(feats), torch.tensor(ids)) == pytest.approx(
        expected, rel=1e-12
    )


def test_group_diversity_zero_iff_groups_identical():
    f = np.repeat(np.array([[1.0, 2.0], [5.0, -1.0]]), 4, axis=0)  # two groups of 4 identical rows
    ids = np.repeat([0, 1], 4)
    assert group_diversity(f, ids) == 0.0
    f[5, 0] += 1e-3
    assert group_diversity(f, ids) > 0.0


def test_group_diversity_rejects_bad_groups():
    with pytest.raises(ValueError, match="group_ids: group 3 has 1 member"):
        group_diversity(np.ones((3, 2)), np.array([0, 0, 3]))
    with pytest.raises(ValueError, match=r"group_ids: expected shape \(3,\)"):
        group_diversity(np.ones((3, 2)), np.array([0, 0]))


def _renders(seed: int, copies: int = 3) -> torch.Tensor:
    specs = list(load_split("test")) * copies  # 1110 images of the test prompts
    return render(sample_scenes(specs, np.random.default_rng(seed)))


def test_shapes_fd_separates_degraded_images_from_fresh_renders():
    ref, other = _renders(1), _renders(2)
    g = torch.Generator().manual_seed(0)
    noisy = (other + 0.1 * torch.randn(other.shape, generator=g)).clamp(0, 1)
    box = torch.ones(3, 1, 3, 3) / 9
    blurred = F.conv2d(F.pad(other, (1, 1, 1, 1), mode="replicate"), box, groups=3)
    fd_same, fd_noisy, fd_blur = (shapes_fd(x, ref) for x in (other, noisy, blurred))
    assert abs(shapes_fd(ref, ref)) < 1e-6
    # measured: ~200 (finite-sample floor at N = 1110), ~1200 noisy, ~2600 blurred
    assert fd_noisy > 3 * fd_same
    assert fd_blur > 6 * fd_same


def test_shapes_diversity_of_renders():
    one = _renders(3, copies=1)[:8]
    same = one.repeat_interleave(4, dim=0)  # 8 groups of 4 identical images
    ids = np.repeat(np.arange(8), 4)
    assert shapes_diversity(same, ids) == 0.0
    spec = list(load_split("test"))[:8]
    varied = render(sample_scenes([s for s in spec for _ in range(4)], np.random.default_rng(4)))
    assert shapes_diversity(varied, ids) > 1.0
