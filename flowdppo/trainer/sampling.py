"""Deterministic ODE samples of any policy: the sampler behind evaluation, ``flowdppo sample``
and the Shapes evaluation.

Sample ``j`` starts from noise seeded by ``(seed, j)`` whatever the batching, so every call with
the same prompts and seed sees the same noise, on every model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from flowdppo.core import sample


@torch.no_grad()
def generate(
    policy: Any,
    prompts: list[str],
    *,
    steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int = 256,
    progress: bool = False,
    velocity: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """ODE samples of ``prompts``: images [N, 3, H, W] in [0, 1] (videos: [N, F, 3, H, W]); noise
    of sample j seeded (seed, j).

    ``velocity(x, sigma, cond)`` replaces the policy's own CFG velocity (``cond``: the batch's
    encoded prompts), for samplers built from the policy, e.g. one that switches to the reference
    model at some σ (``benchmarks/shapes_hybrid_sampler.py``)."""
    field = velocity or (lambda x, s, c: policy.velocity(x, s, c, guidance_scale))
    out = []
    sigmas = policy.sigmas(steps)
    for lo in tqdm(
        range(0, len(prompts), batch_size), desc="sampling", disable=not progress, unit="batch"
    ):
        chunk = prompts[lo : lo + batch_size]
        noise = torch.stack(
            [
                torch.randn(
                    *policy.latent_shape,
                    generator=torch.Generator().manual_seed(seed * 1_000_003 + j),
                )
                for j in range(lo, lo + len(chunk))
            ]
        ).to(policy.device)
        cond = policy.encode_prompts(chunk)
        vel = lambda x, s, c=cond: field(x, s, c)  # noqa: E731
        out.append(policy.decode(sample(vel, noise, sigmas, sampler="ode").latents).cpu())
    return torch.cat(out)
