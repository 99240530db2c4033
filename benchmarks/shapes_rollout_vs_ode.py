"""How far the stochastic rollouts RL trains on are from the ODE samples evaluation uses.

Scores the shipped Shapes base model on 96 training prompts (16 per category), 10 steps, the same
noise seed, with the ODE and with Flow-SDE on different trained steps, at CFG 1 and 3
(docs/experiments/rollout-guidance.md; measured on shapes-base-v1).

    .venv/bin/python benchmarks/shapes_rollout_vs_ode.py
"""

from __future__ import annotations

import torch

from flowdppo.core import sample
from flowdppo.models.shapes import ShapesPolicy
from flowdppo.shapes.evaluate import eval_specs
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import score_images

SETTINGS = [
    ("ode", 0.0, ()),
    ("flow_sde", 0.7, (0, 1, 2)),
    ("flow_sde", 0.4, (0, 1, 2)),
    ("flow_sde", 0.7, (1, 2, 3, 4)),
]


def main() -> None:
    policy = ShapesPolicy.from_pretrained()
    specs = eval_specs(16, split="train")
    cond = policy.encode_prompts([s.text for s in specs])
    for cfg in (1.0, 3.0):
        for sampler, eta, steps in SETTINGS:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(len(specs), *policy.latent_shape, generator=g)
            out = sample(
                lambda x, s, w=cfg: policy.velocity(x, s, cond, w),
                x,
                policy.sigmas(10),
                sampler=sampler,
                eta=eta,
                train_steps=steps,
                generator=g,
            )
            sc = score_images(to_uint8(policy.decode(out.latents)), specs)
            print(
                f"CFG {cfg:g} {sampler} eta {eta} trained steps {steps}: strict {sc.geneval.mean():.2f} "
                f"TIFA {sc.tifa.mean():.2f} clean {sc.clean.mean():.2f}"
            )


if __name__ == "__main__":
    main()
