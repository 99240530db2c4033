"""Periodic evaluation on held-out prompts with the deterministic ODE sampler.

A registered prompt source with an evaluator (``flowdppo.trainer.sources``) samples and scores
itself: Shapes (``shapes:test``) gets the GenEval-style table of ``flowdppo.shapes.evaluate``
(strict accuracy per category, TIFA, FD, diversity); any other source's first ``n`` prompts are
sampled. Every source is also scored with the run's rewards: ``eval/reward_mean`` and
``eval/<reward>``. Both write a sample grid when asked (videos: an animated GIF, ``viz.save_samples``).

``eval/kl_base`` (``kl_to_base``) is the exact KL from the policy to the base model along the
policy's own stochastic trajectories on a fixed set of prompts and noises, the same at every
evaluation of every run with the same ``eval`` section: the x-axis of a reward-vs-KL frontier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from flowdppo.config.schema import RunConfig
from flowdppo.core import gaussian_kl, recompute_step, sample
from flowdppo.rewards.compute import compute_rewards
from flowdppo.trainer.data import load_prompts, register_negative_prompts
from flowdppo.trainer.sampling import counted, generate
from flowdppo.trainer.sources import EvalSamples, prompt_source
from flowdppo.viz import save_samples


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
    registered = prompt_source(source)
    if registered is not None and registered.evaluate is not None:
        ev = registered.evaluate(policy, source, n, steps, cfg_scale, e.seed)
    else:
        ev = _sample_prompts(policy, source, n, steps, cfg_scale, e.seed)
    prompts, meta, images, marks = ev.prompts, ev.metadata, ev.images, ev.marks
    metrics = dict(ev.metrics)
    metrics.update(_reward_metrics(rewards, images, prompts, meta))
    if e.kl_samples > 0:
        metrics["eval/kl_base"] = kl_to_base(policy, cfg, prompts, e.kl_samples, e.seed)
    if grid_path is not None:
        idx = _spread(len(prompts), 32)
        captions, kept = [prompts[i] for i in idx], [marks[i] for i in idx]
        save_samples(images[idx], captions, grid_path, marks=kept)  # videos: grid_path.gif
    return metrics


def _sample_prompts(
    policy: Any, source: str, n: int, steps: int, guidance_scale: float, seed: int
) -> EvalSamples:
    """ODE samples of the source's first ``n`` prompts, with no metrics and no marks."""
    prompts, meta = load_prompts(source)
    prompts, meta = prompts[:n], meta[:n]
    register_negative_prompts(policy, prompts, meta, source)
    images = generate(policy, prompts, steps=steps, guidance_scale=guidance_scale, seed=seed)
    return EvalSamples(prompts, meta, images, {}, [None] * len(prompts))


def write_eval(metrics: dict, table_md: str, out: Path) -> None:
    """``flowdppo eval``'s files: ``out/eval.json`` (the metrics) and ``eval.md`` (printed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    (out / "eval.md").write_text(table_md)
    print(table_md)
    grid = out / "grid.gif" if (out / "grid.gif").exists() else out / "grid.png"  # videos: GIF
    print(f"written: {out / 'eval.json'}, {out / 'eval.md'}, {grid}")


def _reward_metrics(rewards: list, images, prompts: list[str], meta: list[dict]) -> dict:
    """``eval/reward_mean`` and ``eval/<reward>`` of the run's rewards on the evaluation images."""
    batch = compute_rewards(rewards, images, prompts, meta, on_error="drop")
    total = batch.weighted_sum()[batch.valid]
    out = {"eval/reward_mean": float(total.mean())}
    out.update({f"eval/{k}": float(batch.scores[k][batch.valid].mean()) for k in batch.names})
    return out


@torch.no_grad()
def kl_to_base(policy: Any, cfg: RunConfig, prompts: list[str], n: int, seed: int) -> float:
    """Exact KL(π_θ ‖ π_base) per trained-pool step, along π_θ's own trajectories.

    ``n`` samples (prompts ``_spread`` over the evaluation prompts; sample j's noise seeded by
    ``(seed, j)``, so every call sees the same prompts and noise) are rolled out with the
    training sampler, stochastic on every step of ``sampling.train_pool`` and ODE elsewhere, at
    ``sampling.guidance_scale``. At each pool step k the policy's mean μ_θ and the base model's
    mean μ_base (adapter disabled, or the frozen copy) at the same state x_k share the step's
    std s_k, so ``KL_k = ‖μ_θ - μ_base‖² / (2 s_k²)`` (divided by the latent dimensions with
    ``loss.reduction: mean``). Returned: the mean of KL_k over samples and pool steps, float.
    By the chain rule this is the path KL of the pool steps divided by their number.
    """
    s = cfg.sampling
    t = s.num_inference_steps
    pool = list(range(int(t * s.train_pool[0]), int(t * s.train_pool[1])))
    chosen = [prompts[i] for i in _spread(len(prompts), n)]
    chosen = [chosen[j % len(chosen)] for j in range(n)]
    total, count = 0.0, 0
    for lo in range(0, n, s.batch_size):
        batch = chosen[lo : lo + s.batch_size]
        gens = [
            torch.Generator().manual_seed(seed * 1_000_003 + 7 + lo + j) for j in range(len(batch))
        ]
        shape = policy.latent_shape
        init = torch.stack([torch.randn(*shape, generator=g) for g in gens]).to(policy.device)
        noise = torch.stack([torch.randn(len(pool), *shape, generator=g) for g in gens])
        cond = policy.encode_prompts(batch)

        def field(x: torch.Tensor, sigma: torch.Tensor, cond: Any = cond) -> torch.Tensor:
            return policy.velocity(x, sigma, cond, s.guidance_scale)

        velocity = counted(field, t + len(pool))  # the rollout's steps, then the base's

        out = sample(
            velocity,
            init,
            policy.sigmas(t),
            sampler=s.sampler,
            eta=s.eta,
            train_steps=pool,
            noise=noise.to(policy.device),
            reduction=cfg.loss.reduction,
        )
        with policy.reference():
            for k in range(len(pool)):
                ref = recompute_step(
                    velocity,
                    out.x[:, k],
                    out.x_next[:, k],
                    out.sigma[k],
                    out.sigma_next[k],
                    sampler=s.sampler,
                    eta=s.eta,
                    reduction=cfg.loss.reduction,
                )
                kl = gaussian_kl(out.mean[:, k], ref.mean, out.std[:, k], cfg.loss.reduction)
                total += float(kl.double().sum())
                count += kl.numel()
    return total / max(count, 1)


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all categories appear in a Shapes grid)."""
    if n <= k:
        return list(range(n))
    return torch.linspace(0, n - 1, k).round().long().tolist()
