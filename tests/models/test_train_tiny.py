"""A pipeline passed by path trains exactly like the same pipeline passed in memory.

Two Flow-DPPO iterations run by hand from ``flowdppo.core`` (the trainer takes a config, hence
a path, so the in-memory case needs the pieces): Flow-SDE rollout on the first steps → reward
(mean brightness of the decoded images) → group advantages → recompute the trained steps →
Flow-DPPO loss → AdamW. The on-policy invariant (KL 0, ρ 1) is asserted before each update.
The trainer itself is exercised in ``test_trainer_tiny.py``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_STEPS, PROMPTS, Family
from tiny_pipelines import make_tiny_flux, make_tiny_sd3

from flowdppo.core.advantages import group_advantages
from flowdppo.core.divergence import gaussian_kl
from flowdppo.core.losses import LossInputs, compute_loss
from flowdppo.core.rollout import recompute_step, sample

GROUP = 2
TRAIN_STEPS = (0, 1)
ETA = 0.7


def _loss_inputs(policy, cond, roll, advantages, guidance_scale: float) -> LossInputs:
    """Recompute every stored (sample, trained step) under the current weights."""
    means, log_probs = [], []
    for k in range(roll.step_index.numel()):
        out = recompute_step(
            lambda x, s: policy.velocity(x, s, cond, guidance_scale),
            roll.x[:, k],
            roll.x_next[:, k],
            roll.sigma[k],
            roll.sigma_next[k],
            sampler="flow_sde",
            eta=ETA,
        )
        means.append(out.mean)
        log_probs.append(out.log_prob)
    return LossInputs(
        log_prob=torch.stack(log_probs, dim=1),  # [B, K]
        log_prob_old=roll.log_prob,
        advantages=advantages,  # [B], broadcast over the K steps
        mean=torch.stack(means, dim=1),  # [B, K, C, H, W]
        mean_old=roll.mean,
        std=roll.std,
    )


def _iteration(policy, optimizer, guidance_scale: float, seed: int) -> dict[str, float]:
    prompts = [p for p in PROMPTS for _ in range(GROUP)]
    group_ids = torch.arange(len(PROMPTS)).repeat_interleave(GROUP)
    cond = policy.encode_prompts(prompts)
    gen = torch.Generator().manual_seed(seed)
    roll = sample(
        lambda x, s: policy.velocity(x, s, cond, guidance_scale),
        policy.initial_noise(len(prompts), gen),
        policy.sigmas(NUM_STEPS),
        sampler="flow_sde",
        eta=ETA,
        train_steps=TRAIN_STEPS,
        generator=gen,
    )
    rewards = policy.decode(roll.latents).mean(dim=(1, 2, 3))
    advantages = group_advantages(rewards, group_ids)
    inp = _loss_inputs(policy, cond, roll, advantages, guidance_scale)
    kl = gaussian_kl(inp.mean.flatten(0, 1), inp.mean_old.flatten(0, 1), inp.std.flatten())
    out = compute_loss("flow_dppo", inp, delta=1e-5)
    optimizer.zero_grad()
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(list(policy.trainable_parameters()), 1.0)
    optimizer.step()
    return {"kl_max": kl.max().item(), **out.metrics}


def _train(policy, guidance_scale: float) -> list[dict[str, float]]:
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    metrics = [_iteration(policy, optimizer, guidance_scale, seed=10 + i) for i in range(2)]
    for m in metrics:  # before each update: recomputed μ_θ == stored μ_old
        assert m["kl_max"] < 1e-10, m
        assert abs(m["ratio/min"] - 1) < 1e-5 and abs(m["ratio/max"] - 1) < 1e-5, m
    return metrics


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_path_and_in_memory_pipeline_train_the_same(name, tmp_path) -> None:
    make = {"sd3": make_tiny_sd3, "flux": make_tiny_flux}[name]
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from flowdppo.models.flux import FluxPolicy
    from flowdppo.models.sd3 import SD3Policy

    policy_cls = {"sd3": SD3Policy, "flux": FluxPolicy}[name]
    pipeline_cls = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}[name]
    in_memory = make(tmp_path / "parts", seed=7)
    folder = tmp_path / "saved"
    in_memory.save_pretrained(folder)
    guidance = 3.5 if name == "flux" else 1.0
    results = []
    for source in (in_memory, str(folder)):
        family = Family(name, policy_cls, pipeline_cls, folder, guidance)
        torch.manual_seed(0)  # the LoRA A init
        policy = family.policy(source)
        _train(policy, guidance)
        results.append({n: p.detach().clone() for n, p in policy.transformer.named_parameters()})
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=1e-6)
