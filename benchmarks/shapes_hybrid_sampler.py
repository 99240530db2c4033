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
from typing import Any

import torch

from flowdppo.core import sample
from flowdppo.shapes.evaluate import eval_specs, score_eval


@torch.no_grad()
def hybrid_generate(
    policy: Any,
    prompts: list[str],
    *,
    tau: float,
    steps: int,
    guidance_scale: float,
    seed: int,
    first: int = 0,
) -> torch.Tensor:
    """ODE samples with the policy's velocity where σ > ``tau`` and the reference's elsewhere;
    the noise of prompt j is seeded (seed, first + j) as in ``flowdppo.shapes.evaluate.generate``
    (``first``: the index of ``prompts[0]`` in the whole evaluation)."""
    noise = torch.stack(
        [
            torch.randn(
                *policy.latent_shape,
                generator=torch.Generator().manual_seed(seed * 1_000_003 + first + j),
            )
            for j in range(len(prompts))
        ]
    ).to(policy.device)
    cond = policy.encode_prompts(prompts)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if float(sigma.flatten()[0]) > tau:
            return policy.velocity(x, sigma, cond, guidance_scale)
        with policy.reference():
            return policy.velocity(x, sigma, cond, guidance_scale)

    latents = sample(velocity, noise, policy.sigmas(steps), sampler="ode").latents
    return policy.decode(latents).cpu()


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
    e = cfg.eval
    print(f"{a.run} (iteration {it}); ODE {e.num_inference_steps}, CFG {cfg.eval_guidance_scale}")
    print("| τ | strict overall | " + " | ".join(_cats(specs)) + " |")
    print("|---|---|" + "---|" * len(_cats(specs)))
    for tau in (float(t) for t in a.taus.split(",")):
        images = torch.cat(
            [
                hybrid_generate(
                    policy,
                    prompts[lo : lo + 256],
                    tau=tau,
                    steps=e.num_inference_steps,
                    guidance_scale=cfg.eval_guidance_scale,
                    seed=e.seed,
                    first=lo,
                )
                for lo in range(0, len(prompts), 256)
            ]
        )
        m = score_eval(images, specs, with_features=False).metrics
        row = [f"{100 * m[f'eval/strict_{c}']:.0f}" for c in _cats(specs)]
        print(f"| {tau:g} | {100 * m['eval/strict_overall']:.1f}% | " + " | ".join(row) + " |")


def _cats(specs: list) -> list[str]:
    return list(dict.fromkeys(s.category for s in specs))


if __name__ == "__main__":
    main()
