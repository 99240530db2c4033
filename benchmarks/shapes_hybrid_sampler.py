"""Where on the trajectory a run's gain lives: the RL'd policy above σ = τ, the base below.

A run's evaluation (its test prompts, noises, ODE steps and CFG) with a hybrid velocity: the
run's latest weights (EMA if kept) for σ > τ and the base model (the adapter off; the frozen
copy under full fine-tuning) for σ ≤ τ. τ = −1 is the run's own evaluation, τ = 1 the base's.
If the accuracy holds as τ falls, the run's changes at the late steps neither help nor hurt.

    .venv/bin/python benchmarks/shapes_hybrid_sampler.py --run DIR [--taus=-1,0.8,0.6,0.4,0.2]
        [--n 50] [--threads 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from flowdppo.shapes.evaluate import eval_specs, score_eval
from flowdppo.trainer.sampling import generate


def hybrid_velocity(
    policy: Any, tau: float, guidance_scale: float
) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
    """The CFG velocity of the policy where σ > ``tau`` and of its reference (``policy.reference``)
    elsewhere, as ``flowdppo.trainer.sampling.generate``'s ``velocity``."""

    def velocity(x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if float(sigma.flatten()[0]) > tau:
            return policy.velocity(x, sigma, cond, guidance_scale)
        with policy.reference():
            return policy.velocity(x, sigma, cond, guidance_scale)

    return velocity


def main() -> None:
    from flowdppo.runs import load_run_policy

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--taus", default="-1,0.8,0.6,0.4,0.2")
    ap.add_argument("--n", type=int, default=50, help="samples per category")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    policy, cfg, it = load_run_policy(a.run)
    specs = eval_specs(a.n, "test")
    prompts = [s.text for s in specs]
    e, g = cfg.eval, cfg.eval_guidance_scale
    cats = list(dict.fromkeys(s.category for s in specs))
    print(f"{a.run} (iteration {it}); ODE {e.num_inference_steps}, CFG {g}")
    print("| τ | strict overall | " + " | ".join(cats) + " |")
    print("|---|---|" + "---|" * len(cats))
    for tau in (float(t) for t in a.taus.split(",")):
        images = generate(
            policy,
            prompts,
            steps=e.num_inference_steps,
            guidance_scale=g,
            seed=e.seed,
            velocity=hybrid_velocity(policy, tau, g),
        )
        m = score_eval(images, specs, with_features=False).metrics
        row = [f"{100 * m[f'eval/strict_{c}']:.0f}" for c in cats]
        print(f"| {tau:g} | {100 * m['eval/strict_overall']:.1f}% | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
