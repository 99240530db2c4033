"""Does a Shapes checkpoint know spatial relations and colour binding, or does it guess?

RL sharpens what a model already prefers; it has to learn from scratch what the model does at
chance. This measures, on the test prompts (ODE, 40 steps, the checkpoint's CFG):

- position: among images that hold exactly the two described objects, separated along the
  relation's axis by more than the reward's margin, the share in the right order. Chance: 50%.
- color_attr ("a red square and a green circle"): among images with exactly two objects whose
  colours and shapes are the prompt's, the share with the right colour on the right shape.
  Chance: 50% (the other pairing is the only alternative).
- two_object ("a red circle and a red square"): among clean images with exactly two objects of
  the prompt's colour, each one of the prompt's two shapes, the share with two different shapes.
  Chance: 50% (each object picking one of the two shapes on its own).

An accuracy of 50% on the conditional rates means the skill is absent, whatever the overall
score; docs/experiments/what-rl-fixes.md.

    .venv/bin/python benchmarks/shapes_base_skills.py [--checkpoint PATH] [--n 200]

PATH: a Shapes .safetensors (default: the shipped base) or a pretraining ``pretrain_state.pt``
(its EMA weights are used).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from flowdppo.models.shapes import ShapesPolicy, load_base_model
from flowdppo.shapes.evaluate import eval_specs, wilson
from flowdppo.shapes.model import ShapesFlowModel, ShapesModelConfig
from flowdppo.shapes.parser import parse_images
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import REL_MARGIN, relation_holds
from flowdppo.trainer.sampling import generate


def load_policy(path: str | None) -> ShapesPolicy:
    if path is None or path.endswith(".safetensors"):
        return ShapesPolicy.from_pretrained(path)
    state = torch.load(path, weights_only=True)
    model = ShapesFlowModel(ShapesModelConfig(**state.get("model_config", {})))
    model.load_state_dict(state["ema"])
    policy = ShapesPolicy(model.eval())
    # A pretraining state holds no sampling metadata: use the shipped base's recommended CFG.
    policy.default_guidance_scale = float(
        json.loads(load_base_model()[1]["sampling"])["guidance_scale"]
    )
    return policy


def rate(k: int, n: int) -> str:
    """k/n with its 95% Wilson interval."""
    if n == 0:
        return "n/a (n = 0)"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] ({k}/{n})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=200, help="samples per category")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    policy = load_policy(a.checkpoint)
    specs = eval_specs(a.n, categories=("position", "color_attr", "two_object"))
    images = generate(
        policy,
        [s.text for s in specs],
        steps=40,
        guidance_scale=policy.default_guidance_scale,
        seed=0,
    )
    parsed = parse_images(np.asarray(to_uint8(images)))
    pos = [0, 0, 0, 0]  # prompts, exactly both objects, separated on the axis, right order
    col = [0, 0, 0]  # prompts, right colours and shapes (2 objects), right binding
    two = [0, 0, 0]  # prompts, 2 objects of the colour with the prompt's shapes, different shapes
    for spec, p in zip(specs, parsed, strict=True):
        g0, g1 = spec.groups
        want = sorted([(g0.color, g0.shape), (g1.color, g1.shape)])
        got = sorted((o.color, o.shape) for o in p.objects)
        if spec.category == "position":
            pos[0] += 1
            if not (p.clean and got == want):
                continue
            pos[1] += 1
            a_ = next(o for o in p.objects if (o.color, o.shape) == (g0.color, g0.shape))
            b_ = next(o for o in p.objects if (o.color, o.shape) == (g1.color, g1.shape))
            horizontal = spec.relation in ("to the left of", "to the right of")
            gap = abs(a_.cx - b_.cx) if horizontal else abs(a_.cy - b_.cy)
            if gap > REL_MARGIN:
                pos[2] += 1
                pos[3] += relation_holds(spec.relation, a_, b_)
        elif spec.category == "two_object":
            two[0] += 1
            shapes = [o.shape for o in p.objects]
            if (
                p.clean
                and len(p.objects) == 2
                and all(o.color == g0.color for o in p.objects)
                and set(shapes) <= {g0.shape, g1.shape}
            ):
                two[1] += 1
                two[2] += shapes[0] != shapes[1]
        else:
            col[0] += 1
            colors = sorted(o.color for o in p.objects)
            shapes = sorted(o.shape for o in p.objects)
            if (
                p.clean
                and colors == sorted([g0.color, g1.color])
                and shapes == sorted([g0.shape, g1.shape])
            ):
                col[1] += 1
                col[2] += got == want
    print(f"checkpoint: {a.checkpoint or 'shipped base'}, CFG {policy.default_guidance_scale:g}")
    print(f"position: both objects exactly {rate(pos[1], pos[0])}")
    print(f"  right order | separated on the relation's axis: {rate(pos[3], pos[2])} (chance 50%)")
    print(f"color_attr: right colours and shapes {rate(col[1], col[0])}")
    print(f"  right binding | right colours and shapes: {rate(col[2], col[1])} (chance 50%)")
    print(f"two_object: two objects of the colour, prompt's shapes {rate(two[1], two[0])}")
    print(f"  two different shapes | that: {rate(two[2], two[1])} (chance 50%)")


if __name__ == "__main__":
    main()
