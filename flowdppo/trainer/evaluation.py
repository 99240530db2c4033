"""Periodic evaluation on held-out prompts with the deterministic ODE sampler.

Shapes prompt sources (``shapes:test``) get the GenEval-style table of ``flowdppo.shapes.evaluate``
(strict accuracy per category, TIFA, FD, diversity). Any other source is scored with the run's
rewards: ``eval/reward_mean`` and ``eval/<reward>``. Both write a sample grid when asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowdppo.config.schema import RunConfig
from flowdppo.rewards.compute import compute_rewards
from flowdppo.shapes.evaluate import eval_specs, generate, score_eval
from flowdppo.trainer.data import load_prompts
from flowdppo.viz import save_grid


def evaluate(
    policy: Any,
    cfg: RunConfig,
    rewards: list,
    grid_path: Path | None = None,
    n_per_category: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> dict[str, float]:
    """Evaluate the policy as configured by ``cfg.eval`` (``n_per_category``, ``steps`` and
    ``guidance_scale`` override it when given); returns ``eval/...`` metrics."""
    e = cfg.eval
    n = n_per_category or e.per_category
    steps = steps or e.num_inference_steps
    cfg_scale = cfg.eval_guidance_scale if guidance_scale is None else guidance_scale
    source = cfg.data.eval_prompts
    if source.startswith("shapes:"):
        parts = source.split(":")
        from flowdppo.shapes.prompts import CATEGORIES

        cats = tuple(parts[2].split(",")) if len(parts) == 3 else CATEGORIES
        specs = eval_specs(n, parts[1], cats)
        prompts = [s.text for s in specs]
        images = generate(policy, prompts, steps=steps, guidance_scale=cfg_scale, seed=e.seed)
        res = score_eval(images, specs)
        metrics, marks = res.metrics, [bool(p) for p in res.passed]
    else:
        all_prompts, meta = load_prompts(source)
        prompts, meta = all_prompts[:n], meta[:n]
        images = generate(policy, prompts, steps=steps, guidance_scale=cfg_scale, seed=e.seed)
        batch = compute_rewards(rewards, images, prompts, meta, on_error="drop")
        total = batch.weighted_sum()[batch.valid]
        metrics = {"eval/reward_mean": float(total.mean())}
        metrics.update(
            {f"eval/{k}": float(batch.scores[k][batch.valid].mean()) for k in batch.names}
        )
        marks = [None] * len(prompts)
    if grid_path is not None:
        idx = _spread(len(prompts), 32)
        save_grid(images[idx], [prompts[i] for i in idx], grid_path, marks=[marks[i] for i in idx])
    return metrics


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all categories appear in a Shapes grid)."""
    if n <= k:
        return list(range(n))
    return torch.linspace(0, n - 1, k).round().long().tolist()
