"""Tests for flowdppo/rewards/image.py (JPEG (in)compressibility)."""

import io

import pytest
import torch
from PIL import Image

from flowdppo.rewards.base import build_reward
from flowdppo.rewards.image import jpeg_size_kb


def _flat_and_noise() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    flat = torch.full((3, 64, 64), 0.5)
    noise = torch.rand(3, 64, 64, generator=g)
    return torch.stack([flat, noise])  # [2, 3, 64, 64]


def test_flat_image_compresses_better_than_noise():
    images = _flat_and_noise()
    comp = build_reward("jpeg_compressibility")(images, ["a", "b"], [{}, {}]).scores
    incomp = build_reward("jpeg_incompressibility")(images, ["a", "b"], [{}, {}]).scores
    assert comp.shape == (2,) and comp.dtype == torch.float32
    assert comp[0] > comp[1]  # flat scores higher for compressibility
    assert incomp[1] > incomp[0]
    torch.testing.assert_close(comp, -incomp, rtol=0, atol=0)


def test_size_matches_pillow_encoding_in_kb():
    images = _flat_and_noise()[1:]
    arr = (images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    expected = len(buf.getvalue()) / 1000.0
    assert jpeg_size_kb(images, quality=80).item() == pytest.approx(expected, abs=1e-6)


def test_lower_quality_gives_smaller_files():
    images = _flat_and_noise()[1:]
    assert jpeg_size_kb(images, 30) < jpeg_size_kb(images, 95)


@pytest.mark.parametrize("quality", [0, 101, 2.5])
def test_bad_quality_names_the_field(quality):
    with pytest.raises(ValueError, match=r"jpeg_compressibility\.quality"):
        build_reward("jpeg_compressibility", quality=quality)


def test_rejects_wrong_image_shape():
    reward = build_reward("jpeg_incompressibility")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(2, 64, 64), ["a", "b"], [{}, {}])
