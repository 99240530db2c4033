"""The one rollout loop over a velocity function (docs/algorithm.md §2, §3, §6 step 1).

A model adapter only supplies ``velocity_fn(latents [B, ...], sigma [B]) -> v [B, ...]`` (prompt,
guidance and dtype handling live in the closure); this module owns the denoising loop. Trained
steps use the chosen stochastic sampler and store the tuple of §3 (x_k, x_{k+1}, μ_old, s_k,
logp_old); every other step runs the ODE and stores nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._util import per_sample
from .schedules import model_sigmas
from .sde import StepOutput, get_sampler, ode_step

VelocityFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class RolloutOutput:
    """Result of ``sample``; K = number of trained steps, all float32 except ``step_index``.

    Attributes:
        latents: [B, ...] final latents (sigma = 0).
        x: [B, K, ...] latents x_k entering each trained step.
        x_next: [B, K, ...] the sampled x_{k+1}.
        mean: [B, K, ...] the step means μ_old.
        std: [B, K] the step stds s_k.
        log_prob: [B, K] logp_old (in the ``reduction`` unit of the call).
        step_index: int64 [K], the trained step indices, ascending.
        sigma: [K] sigma of each trained step; sigma_next: [K] the next sigma.
    """

    latents: Tensor
    x: Tensor
    x_next: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor
    step_index: Tensor
    sigma: Tensor
    sigma_next: Tensor


def _train_set(train_steps: Iterable[int], num_steps: int, sampler: str) -> list[int]:
    steps = sorted(int(k) for k in train_steps)
    if len(set(steps)) != len(steps) or any(k < 0 or k >= num_steps for k in steps):
        raise ValueError(
            f"train_steps must be distinct step indices in [0, {num_steps}), got {steps}"
        )
    if steps and sampler == "ode":
        raise ValueError(
            f"sampler 'ode' has no log-prob, so train_steps must be empty; got {steps}"
        )
    return steps


def _stack(records: list[StepOutput], xs: list[Tensor], like: Tensor) -> dict[str, Tensor]:
    """Stack K per-step records along dim 1: [B, ...] x K -> [B, K, ...]."""
    if not records:
        empty = like.new_zeros(like.shape[0], 0, *like.shape[1:], dtype=torch.float32)
        scalars = like.new_zeros(like.shape[0], 0, dtype=torch.float32)
        return {"x": empty, "x_next": empty, "mean": empty, "std": scalars, "log_prob": scalars}
    return {
        "x": torch.stack(xs, dim=1),
        "x_next": torch.stack([r.x_next for r in records], dim=1),
        "mean": torch.stack([r.mean for r in records], dim=1),
        "std": torch.stack([r.std for r in records], dim=1),
        "log_prob": torch.stack([r.log_prob for r in records], dim=1),
    }


@torch.no_grad()
def sample(
    velocity_fn: VelocityFn,
    latents: Tensor,
    sigmas: Tensor,
    *,
    sampler: str = "flow_sde",
    eta: float = 0.7,
    train_steps: Iterable[int] = (),
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    reduction: str = "mean",
    untrained_velocity_fn: VelocityFn | None = None,
) -> RolloutOutput:
    """Denoise ``latents`` along ``sigmas``; stochastic and stored at ``train_steps`` only.

    Step i goes from ``sigmas[i]`` to ``sigmas[i + 1]`` with ``v = velocity_fn(x, sigma_i [B])``;
    train steps use ``SAMPLERS[sampler]`` (noise from ``generator``), the others ``ode_step``.
    No gradient. Latents are carried in float32 between steps.

    Args:
        velocity_fn: (latents [B, ...] float32, sigma [B] float32) -> v [B, ...].
        latents: [B, ...] initial noise at ``sigmas[0]``.
        sigmas: schedule [T + 1] (validated by ``model_sigmas``; a missing final 0 is appended).
        sampler: a key of ``SAMPLERS``; eta: its noise level.
        train_steps: distinct indices in [0, T).
        noise: optional [B, K, ...] standard-normal noise of the K trained steps (then
            ``generator`` is unused). Drawing it per sample outside makes a sample independent of
            how the batch is split across processes or forward passes.
        reduction: log-prob reduction, "mean" or "sum".
        untrained_velocity_fn: optional velocity for the steps that are not trained (ODE steps,
            whose log-prob is never taken), e.g. the model at a lower precision. Trained steps
            always use ``velocity_fn``, so their stored tuple is what the update recomputes.
    Returns:
        RolloutOutput with K = len(train_steps).
    """
    kernel = get_sampler(sampler)
    sig = model_sigmas(sigmas).to(latents.device)
    num_steps = sig.numel() - 1
    train = _train_set(train_steps, num_steps, sampler)
    x = latents.float()
    batch = x.shape[0]
    if noise is not None and tuple(noise.shape) != (batch, len(train), *x.shape[1:]):
        raise ValueError(
            f"noise must have shape {[batch, len(train), *x.shape[1:]]} (B, K, latent), got {list(noise.shape)}"
        )
    records: list[StepOutput] = []
    xs: list[Tensor] = []
    untrained = velocity_fn if untrained_velocity_fn is None else untrained_velocity_fn
    for i in range(num_steps):
        v = (velocity_fn if i in train else untrained)(x, sig[i].expand(batch))
        if i in train:
            z = None if noise is None else noise[:, len(records)]
            # the step's two sigmas as 0-d tensors: the kernel checks them as two numbers
            out = kernel(
                x, v, sig[i], sig[i + 1], eta, noise=z, generator=generator, reduction=reduction
            )
            xs.append(x)
            records.append(out)
        else:
            out = ode_step(x, v, sig[i], sig[i + 1])
        x = out.x_next
    idx = torch.tensor(train, dtype=torch.long, device=x.device)
    return RolloutOutput(
        latents=x, step_index=idx, sigma=sig[idx], sigma_next=sig[idx + 1], **_stack(records, xs, x)
    )


def recompute_step(
    velocity_fn: VelocityFn,
    x: Tensor,
    x_next: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    *,
    sampler: str,
    eta: float,
    reduction: str = "mean",
) -> StepOutput:
    """Log-prob and mean of stored transitions under the current parameters (with gradient).

    ``v = velocity_fn(x, sigma [B])``, then ``SAMPLERS[sampler](x, v, sigma, sigma_next, eta,
    x_next=x_next)``. With the rollout's parameters this reproduces the stored ``mean`` and
    ``log_prob`` (the on-policy invariant of docs/algorithm.md §6).

    Args:
        x, x_next: [B, ...] stored x_k and x_{k+1} (pairs may come from different steps).
        sigma, sigma_next: float or [B].
    Returns:
        StepOutput (x_next is the given one).
    """
    kernel = get_sampler(sampler)
    sigma_b = per_sample(sigma, x.shape[0], x.device, "sigma")
    # Contiguous float32 like the state in ``sample``: a strided slice of the stored [B, K, ...]
    # tensor can take another matmul path and differ in the last bit (breaking ρ = 1 exactly).
    v = velocity_fn(x.float().contiguous(), sigma_b)
    return kernel(x, v, sigma_b, sigma_next, eta, x_next=x_next, reduction=reduction)
