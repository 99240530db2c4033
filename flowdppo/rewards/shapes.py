"""The Shapes world's exact rewards (docs/shapes.md, "Rewards"), registered by name.

- ``shapes_geneval``: strict 0/1 (clean and every atom holds); details: ``clean``.
- ``shapes_tifa``: clean × fraction of the prompt's atoms that hold (the dense training reward).
- ``shapes_object_size``: mean recognised-object area / 49 (competes with the two above).
Prompts are parsed with the Shapes grammar; a prompt outside it is a clear error.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from flowdppo.rewards.base import RewardOutput, register_reward
from flowdppo.shapes.prompts import PromptSpec, parse_prompt
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import score_images

_parse = lru_cache(maxsize=65536)(parse_prompt)


class _ShapesReward:
    field = "tifa"

    def __init__(self, batch_size: int = 1024):
        if batch_size < 1:
            raise ValueError(f"{self.name}.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return f"shapes_{self.field}"

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        specs: list[PromptSpec] = [_parse(p) for p in prompts]
        s = score_images(to_uint8(images), specs)
        scores = torch.from_numpy(np.asarray(getattr(s, self.field), dtype=np.float32))
        return RewardOutput(scores, {"clean": torch.from_numpy(s.clean.astype(np.float32))})


@register_reward("shapes_geneval")
class ShapesGenEval(_ShapesReward):
    field = "geneval"


@register_reward("shapes_tifa")
class ShapesTifa(_ShapesReward):
    field = "tifa"


@register_reward("shapes_object_size")
class ShapesObjectSize(_ShapesReward):
    field = "object_size"
