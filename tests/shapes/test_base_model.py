"""The shipped Shapes base model loads and reproduces a stored small evaluation.

The stored values were produced by this file's ``small_eval()`` on the shipped checkpoint
(regenerate with ``python tests/shapes/test_base_model.py`` after re-shipping the base model).
Tolerances allow for CPU-dependent float rounding of the forward pass, not for another model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from flowdppo.models.shapes import ShapesPolicy, default_checkpoint, load_base_model
from flowdppo.shapes.evaluate import eval_specs, score_eval
from flowdppo.trainer.sampling import generate

STORED = Path(__file__).parent / "data" / "base_small_eval.json"


def small_eval() -> dict:
    """2 test prompts per category, 10 ODE steps, the checkpoint's own CFG, seed 1234."""
    torch.set_num_threads(1)
    policy = ShapesPolicy.from_pretrained()
    specs = eval_specs(2)
    images = generate(
        policy,
        [s.text for s in specs],
        steps=10,
        guidance_scale=policy.default_guidance_scale,
        seed=1234,
    )
    res = score_eval(images, specs, with_features=False)
    return {
        "prompts": [s.text for s in specs],
        "pixel_mean": images.mean((1, 2, 3)).tolist(),
        "pixel_std": images.std((1, 2, 3)).tolist(),
        "passed": [bool(p) for p in res.passed],
    }


def test_checkpoint_is_small_and_self_describing():
    path = default_checkpoint()
    assert path.stat().st_size < 10 * 2**20
    model, meta = load_base_model()
    assert json.loads(meta["sampling"]) == {"shift": 1.0, "guidance_scale": 3.0}
    # Stage 2 of the recipe (docs/shapes.md, "The base model"): 800 steps continued from the
    # velocity-skip stage 1 on captions that leave one object of 40% of the compositional
    # images unmentioned.
    recipe = json.loads(meta["recipe"])
    assert (recipe["steps"], recipe["seed"], recipe["lr"]) == (800, 1, 3e-4)
    assert (recipe["caption_noise"], recipe["caption_noise_kind"]) == (0.4, "unmentioned")
    assert json.loads(meta["model"])["velocity_skip"] is True
    assert model.cfg.velocity_skip  # and the loaded network is built with it
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_reproduces_stored_small_eval():
    want = json.loads(STORED.read_text())
    got = small_eval()
    assert got["prompts"] == want["prompts"]
    np.testing.assert_allclose(got["pixel_mean"], want["pixel_mean"], atol=2e-3)
    np.testing.assert_allclose(got["pixel_std"], want["pixel_std"], atol=2e-3)
    flips = sum(a != b for a, b in zip(got["passed"], want["passed"], strict=True))
    assert flips <= 1, f"{flips} of {len(want['passed'])} pass/fail outcomes changed"


if __name__ == "__main__":
    STORED.write_text(json.dumps(small_eval(), indent=1) + "\n")
    print(f"wrote {STORED}", file=sys.stderr)
