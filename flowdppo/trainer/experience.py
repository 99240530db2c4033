"""Collect one iteration's experience: rollouts on the selected steps, rewards, reference KL.

docs/algorithm.md §6 steps 1–2. Sample ``j`` of the global batch (prompt ``j // G``) draws its initial
noise and its trained-step noise from its own generator seeded by ``(seed, iteration, j)``, so
a sample is the same whichever process or forward pass produces it (with
``sampling.shared_initial_noise`` the initial noise is drawn per prompt, from ``(seed, iteration,
j // G)``, and only the trained-step noise per sample). For the trained steps the
tuple of §3 is stored (x_k, x_{k+1}, μ_old, s_k, logp_old) plus, when something uses it, μ_ref,
the reference model's mean at the same state (frozen, so it never needs recomputing: it serves
both the β·KL penalty and the ``kl/ref_mean`` metric). That reference pass costs one more forward
per trained step, so it runs only where ``RunConfig.reference_pass`` says: every iteration with
β > 0, else every ``train.kl_ref_every`` iterations. No replay forward pass is made before the
update.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from flowdppo.config.schema import RunConfig, SamplingConfig
from flowdppo.core import gaussian_kl, recompute_step, sample
from flowdppo.models.base import Policy
from flowdppo.rewards.compute import RewardBatch, RewardError, compute_rewards
from flowdppo.trainer.crashpoints import crash_point


@dataclass
class Experience:
    """This process's share of an iteration; B local samples, K trained steps."""

    prompts: list[str]
    metadata: list[dict[str, Any]]
    sample_ids: torch.Tensor  # int64 [B] index in the global batch
    group_ids: torch.Tensor  # int64 [B] global prompt index
    x: torch.Tensor  # [B, K, *latent]
    x_next: torch.Tensor  # [B, K, *latent]
    mean: torch.Tensor  # [B, K, *latent]
    mean_ref: torch.Tensor | None  # [B, K, *latent]; None: no reference pass this iteration
    std: torch.Tensor  # [B, K]
    log_prob: torch.Tensor  # [B, K]
    sigma: torch.Tensor  # [K]
    sigma_next: torch.Tensor  # [K]
    step_index: torch.Tensor  # [K]
    images: torch.Tensor  # [B, 3, H, W] in [0, 1] (videos: [B, F, 3, H, W])
    rewards: RewardBatch | None = None
    batch_metadata: list[dict[str, Any]] = field(default_factory=list)  # [P] all processes' prompts
    advantages: torch.Tensor | None = None  # [B]
    timings: dict[str, float] = field(default_factory=dict)


def sample_noise(
    seed: int,
    iteration: int,
    sample_id: int,
    shape: tuple[int, ...],
    k: int,
    group_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial noise [*shape] and trained-step noise [k, *shape] of one global sample.

    With ``group_id`` the initial noise is the group's (drawn from a stream of its own, the same
    for every sample of the group) and only the trained-step noise is the sample's.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + iteration) * 1_000_003 + sample_id)
    z = torch.randn(1 + k, *shape, generator=g)
    if group_id is None:
        return z[0], z[1:]
    # A stream of its own: a hash, so no (iteration, group) seed equals an (iteration', sample) one.
    key = hashlib.sha256(f"group-noise/{seed}/{iteration}/{group_id}".encode()).digest()
    gg = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
    return torch.randn(*shape, generator=gg), z[1:]


def use_reduced_precision(s: SamplingConfig, device: torch.device) -> bool:
    """``sampling.untrained_precision``: full, reduced, or auto (reduced where bfloat16 kernels
    exist: oneDNN's on a CPU, any CUDA device).

    ``auto`` asks the hardware unless ``FLOWDPPO_FORCE_BF16_KERNELS`` is ``1`` (answer: the
    kernels exist) or ``0`` (they do not), so either resolution can be run, and tested, on any
    machine. The trainer resolves ``auto`` once and saves the answer with the run."""
    if s.untrained_precision != "auto":
        return s.untrained_precision == "reduced"
    import os  # local: this function is the one place that reads the variable

    forced = os.environ.get("FLOWDPPO_FORCE_BF16_KERNELS", "")
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"FLOWDPPO_FORCE_BF16_KERNELS={forced!r}: expected 0, 1 or unset")
        return forced == "1"
    if device.type == "cpu":  # a private oneDNN query: absent in a build means no kernels known
        supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(supported is not None and supported())
    return device.type == "cuda"


def _rollout_batch(
    policy: Policy,
    cfg: RunConfig,
    prompts: list[str],
    ids: list[int],
    iteration: int,
    steps: list[int],
    reference: bool,
    sigmas: torch.Tensor,
):
    s = cfg.sampling
    shape = policy.latent_shape
    gsize = s.group_size if s.shared_initial_noise else None
    noises = [
        sample_noise(
            cfg.train.seed, iteration, j, shape, len(steps), None if gsize is None else j // gsize
        )
        for j in ids
    ]
    init = torch.stack([n[0] for n in noises]).to(policy.device)  # [b, *latent]
    step_noise = torch.stack([n[1] for n in noises]).to(policy.device)  # [b, K, *latent]
    cond = policy.encode_prompts(prompts)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return policy.velocity(x, sigma, cond, s.guidance_scale)

    def reduced(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with policy.reduced_precision():
            return policy.velocity(x, sigma, cond, s.guidance_scale)

    out = sample(
        velocity,
        init,
        sigmas,
        sampler=s.sampler,
        eta=s.eta,
        train_steps=steps,
        noise=step_noise,
        reduction=cfg.loss.reduction,
        untrained_velocity_fn=reduced if use_reduced_precision(s, policy.device) else None,
    )
    mean_ref = _reference_means(policy, velocity, out, cfg) if reference else None
    return out, mean_ref, policy.decode(out.latents)


def _reference_means(policy: Policy, velocity, out, cfg: RunConfig) -> torch.Tensor:
    """μ_ref [b, K, *latent]: each trained step recomputed with the adapter off (K forwards)."""
    s = cfg.sampling
    refs = []
    with torch.no_grad(), policy.reference():
        for k in range(out.x.shape[1]):
            r = recompute_step(
                velocity,
                out.x[:, k],
                out.x_next[:, k],
                out.sigma[k],
                out.sigma_next[k],
                sampler=s.sampler,
                eta=s.eta,
                reduction=cfg.loss.reduction,
            )
            refs.append(r.mean)
    return torch.stack(refs, dim=1) if refs else out.mean.clone()


def collect(
    policy: Policy,
    cfg: RunConfig,
    prompts: list[str],
    metadata: list[dict[str, Any]],
    sample_ids: list[int],
    iteration: int,
    steps: list[int],
    rewards: list,
    pool: ThreadPoolExecutor,
) -> Experience:
    """Roll out this process's samples in forward batches; rewards run in ``pool`` meanwhile."""
    bs = cfg.sampling.batch_size
    reference = cfg.reference_pass(iteration)
    sigmas = policy.sigmas(cfg.sampling.num_inference_steps)  # once: a scheduler query each time
    parts, futures = [], []
    t_roll = 0.0
    for lo in range(0, len(prompts), bs):
        t0 = time.perf_counter()
        out, mean_ref, images = _rollout_batch(
            policy,
            cfg,
            prompts[lo : lo + bs],
            sample_ids[lo : lo + bs],
            iteration,
            steps,
            reference,
            sigmas,
        )
        t_roll += time.perf_counter() - t0
        parts.append((out, mean_ref, images))
        futures.append(
            pool.submit(
                _score,
                rewards,
                images,
                prompts[lo : lo + bs],
                metadata[lo : lo + bs],
                cfg.reward_on_error,
            )
        )
        crash_point("rollout")
    t0 = time.perf_counter()
    scored = [f.result() for f in futures]
    wait = time.perf_counter() - t0
    out0 = parts[0][0]
    g = cfg.sampling.group_size
    exp = Experience(
        prompts=prompts,
        metadata=metadata,
        sample_ids=torch.tensor(sample_ids),
        group_ids=torch.tensor(sample_ids) // g,
        x=_cat(parts, "x"),
        x_next=_cat(parts, "x_next"),
        mean=_cat(parts, "mean"),
        std=_cat(parts, "std"),
        log_prob=_cat(parts, "log_prob"),
        mean_ref=torch.cat([p[1] for p in parts]) if reference else None,
        images=torch.cat([p[2] for p in parts]),
        sigma=out0.sigma,
        sigma_next=out0.sigma_next,
        step_index=out0.step_index,
        rewards=RewardBatch.concat([s[0] for s in scored]),
    )
    exp.timings = {
        "time/rollout_s": t_roll,
        "time/reward_s": sum(s[1] for s in scored),
        "time/reward_wait_s": wait,
    }
    return exp


def _cat(parts: list, attr: str) -> torch.Tensor:
    """Concatenate one stored RolloutOutput field over the forward batches (batch dim 0)."""
    return torch.cat([getattr(p[0], attr) for p in parts])


def _score(
    rewards: list,
    images: torch.Tensor,
    prompts: list[str],
    metadata: list[dict[str, Any]],
    on_error: str,
):
    t0 = time.perf_counter()
    try:
        batch = compute_rewards(rewards, images, prompts, metadata, on_error=on_error)
    except RewardError:
        # With "drop", compute_rewards raises only when every sample of *its* call failed; here
        # that is one forward batch, not the iteration: drop them all and let the gathered
        # global batch decide (Trainer.advantages fails only if no sample is left at all).
        if on_error != "drop":
            raise
        batch = _all_dropped(rewards, images.shape[0])
    return batch, time.perf_counter() - t0


def _all_dropped(rewards: list, n: int) -> RewardBatch:
    names = [r.name for r in rewards]
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float32)
    scores = {name: torch.zeros(n) for name in names}
    return RewardBatch(names, weights, scores, torch.zeros(n, dtype=torch.bool), {}, {})


def kl_to_reference(exp: Experience, reduction: str) -> torch.Tensor | None:
    """Exact KL(π_θold ‖ π_ref) per (sample, trained step): [B, K] (same std, so symmetric);
    None when this iteration made no reference pass."""
    if exp.mean_ref is None:
        return None
    b, k = exp.std.shape
    return gaussian_kl(
        exp.mean.flatten(0, 1), exp.mean_ref.flatten(0, 1), exp.std.flatten(), reduction
    ).view(b, k)
