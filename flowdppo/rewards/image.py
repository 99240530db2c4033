"""Generic image rewards that need no model: JPEG (in)compressibility (DDPO, Flow-GRPO).

The score is the size in kB (1 kB = 1000 bytes) of the image saved as JPEG by Pillow at a fixed
quality; ``jpeg_incompressibility`` returns the size, ``jpeg_compressibility`` its negation, so
that higher is better for both. Images are rounded to 8 bits first, as when saved to disk.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from flowdppo.rewards.base import RewardOutput, register_reward
from flowdppo.rewards.utils import check_images, check_positive_int, to_pil


def jpeg_size_kb(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG size in kB of each image: [B, 3, H, W] float in [0, 1] → [B] float32."""
    sizes = []
    for im in to_pil(images):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class _JpegReward:
    sign = 1.0
    name = "jpeg"

    def __init__(self, quality: int = 95, batch_size: int = 64) -> None:
        check_positive_int(quality, f"{self.name}.quality")
        if quality > 100:
            raise ValueError(f"{self.name}.quality must be in [1, 100], got {quality}")
        self.quality = quality
        self.batch_size = check_positive_int(batch_size, f"{self.name}.batch_size")
        self.device = torch.device("cpu")

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        check_images(images, self.name)
        size_kb = jpeg_size_kb(images, self.quality)
        return RewardOutput(scores=self.sign * size_kb, details={"jpeg_kb": size_kb})


@register_reward("jpeg_incompressibility")
class JpegIncompressibility(_JpegReward):
    """Score = JPEG size in kB at ``quality`` (rewards detail and noise)."""

    sign = 1.0
    name = "jpeg_incompressibility"


@register_reward("jpeg_compressibility")
class JpegCompressibility(_JpegReward):
    """Score = −(JPEG size in kB) at ``quality`` (rewards flat, simple images)."""

    sign = -1.0
    name = "jpeg_compressibility"
