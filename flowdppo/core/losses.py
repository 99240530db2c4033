"""Policy losses over (sample, trained step) terms (docs/algorithm.md §4).

Every loss takes one ``LossInputs`` (all tensors per (sample, step) term, batch dimensions first)
and returns a ``LossOutput`` (scalar loss, metrics as python floats). ``ρ = exp(logp_θ -
logp_old)`` is computed from a log-ratio clamped to ``±MAX_LOG_RATIO`` so that it never overflows
(no NaN/inf); a term whose log-ratio is beyond the clamp gets no gradient through ρ.

Units: ``log_prob`` and the divergence thresholds are in the unit of the log-prob reduction
(``"mean"``: per latent dimension, the peers' unit of ε = 1e-4 and δ = 1e-5; ``"sum"``: per
sample). Pass the same ``reduction`` the log-probs were computed with.

Metrics (python floats, averaged over the terms of this call):
``ratio/mean|min|max`` of ρ; ``kl/old_new_mean|max`` exact KL(π_old ‖ π_θ) in the reduction unit;
``mask/frac`` dropped terms / all terms, split into ``mask/frac_pos_adv`` and ``mask/frac_neg_adv``
(dropped with A > 0, resp. A < 0, over all terms); ``clip/frac`` = ``clip/frac_high`` (ρ > 1 + ε)
+ ``clip/frac_low`` (ρ < 1 - ε); ``kl/ref_mean`` KL(π_θ ‖ π_ref); ``loss/policy``, ``loss/total``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ._util import check_positive, check_reduction
from .divergence import gaussian_kl, get_divergence

MAX_LOG_RATIO = 20.0

# The ε each clipped loss is published with, in the "mean" unit: Flow-GRPO's 1e-4 and
# GRPO-Guard's 2e-6 (its RatioNorm ratio exp(c·(Δlogp + bias)), c = s_k, moves less than ρ).
DEFAULT_CLIP_RANGE: dict[str, float] = {"ratio_clip": 1e-4, "grpo_guard": 2e-6}


@dataclass(frozen=True)
class FlowDPPOParams:
    """Hyper-parameters of ``flow_dppo_loss``: δ > 0 in the unit of ``divergence`` ("kl" | "tv");
    ``mask`` "asymmetric" (the paper's) | "symmetric" (an ablation)."""

    delta: float
    divergence: str = "kl"
    reduction: str = "mean"
    mask: str = "asymmetric"


@dataclass(frozen=True)
class RatioClipParams:
    """Hyper-parameters of ``ratio_clip_loss``: ε > 0 (default Flow-GRPO's)."""

    clip_range: float = DEFAULT_CLIP_RANGE["ratio_clip"]
    reduction: str = "mean"


@dataclass(frozen=True)
class GRPOGuardParams:
    """Hyper-parameters of ``grpo_guard_loss``: ε > 0 (default GRPO-Guard's), ``scale`` "term" |
    "batch"."""

    clip_range: float = DEFAULT_CLIP_RANGE["grpo_guard"]
    reduction: str = "mean"
    scale: str = "term"


LossFn = Callable[..., "LossOutput"]
LOSSES: dict[str, LossFn] = {}
LOSS_PARAMS: dict[str, type] = {}  # name -> the loss's parameter dataclass


def register_loss(name: str, params: type) -> Callable[[LossFn], LossFn]:
    """Decorator: register a loss ``fn(inp, **fields of params)`` under ``name`` with its typed
    parameter dataclass ``params``."""

    def deco(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name], LOSS_PARAMS[name] = fn, params
        return fn

    return deco


def loss_params(name: str, values: dict[str, Any], *, only_known: bool = False) -> Any:
    """The parameter dataclass of loss ``name`` from ``values``; a value of None keeps the field's
    default. An unknown key is a ``ValueError`` listing the valid ones (``only_known``: ignored),
    a missing required one a ``ValueError`` naming it."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    cls = LOSS_PARAMS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown and not only_known:
        raise ValueError(
            f"loss {name!r} got unknown hyper-parameter(s) {unknown}; valid: {sorted(fields)}"
        )
    given = {k: v for k, v in values.items() if k in fields and v is not None}
    missing = sorted(
        k for k, f in fields.items() if k not in given and f.default is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"loss {name!r} needs hyper-parameter(s) {missing}")
    return cls(**given)


@dataclass(frozen=True)
class LossInputs:
    """The per-term tensors of one mini-batch; term shape ``P`` is e.g. [N] or [B, K].

    Attributes:
        log_prob: P, log π_θ(x_next | x) under the current parameters (carries the gradient).
        log_prob_old: P, stored at rollout time.
        advantages: P, or per sample P[:1] (e.g. [B] for P = [B, K]), broadcast over steps.
        mean: P + latent dims, μ_θ (carries the gradient).
        mean_old: P + latent dims, μ_old stored at rollout time.
        std: P (or a float), the step std s_k of the sampler that produced the step.
        mean_ref: optional P + latent dims, μ_ref of the reference model (β > 0 only).
        step_size: optional P (or a float), ``|Δ| = sigma - sigma_next`` (GRPO-Guard only).
    """

    log_prob: Tensor
    log_prob_old: Tensor
    advantages: Tensor
    mean: Tensor
    mean_old: Tensor
    std: Tensor | float
    mean_ref: Tensor | None = None
    step_size: Tensor | float | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.log_prob.shape)
        if len(shape) < 1:
            raise ValueError("log_prob must have at least one (batch) dimension, got a scalar")
        _check_shape("log_prob_old", self.log_prob_old, shape)
        adv = tuple(self.advantages.shape)
        if adv != shape[: len(adv)] or len(adv) == 0:
            raise ValueError(
                f"advantages must have shape {list(shape)} or a prefix of it, got {list(adv)}"
            )
        for name in ("mean", "mean_old", "mean_ref"):
            t = getattr(self, name)
            if t is not None and (tuple(t.shape[: len(shape)]) != shape or t.ndim == len(shape)):
                raise ValueError(
                    f"{name} must have shape {list(shape)} + latent dims, got {list(t.shape)}"
                )
        if self.mean_old.shape != self.mean.shape:
            raise ValueError(
                f"mean_old must have the shape of mean {list(self.mean.shape)}, got {list(self.mean_old.shape)}"
            )
        for name in ("std", "step_size"):
            t = getattr(self, name)
            if isinstance(t, Tensor) and t.ndim > 0:
                _check_shape(name, t, shape)

    @property
    def num_terms(self) -> int:
        return self.log_prob.numel()


@dataclass(frozen=True)
class LossOutput:
    """A scalar loss to minimise and its metrics (python floats, names ``section/name``)."""

    loss: Tensor
    metrics: dict[str, float]


@dataclass(frozen=True)
class _Flat:
    """LossInputs flattened to N terms: [N] scalars and [N, D] means, float32."""

    log_ratio: Tensor
    adv: Tensor
    mean: Tensor
    mean_old: Tensor
    std: Tensor


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def _per_term(value: Tensor | float, inp: LossInputs) -> Tensor:
    """A float or P-shaped tensor as float32 [N]."""
    t = torch.as_tensor(value, dtype=torch.float32, device=inp.log_prob.device)
    return t.expand(inp.log_prob.shape).reshape(-1)  # P -> [N]


def _flatten(inp: LossInputs) -> _Flat:
    shape, n = inp.log_prob.shape, inp.num_terms
    adv = inp.advantages.detach().float()
    adv = adv.reshape(*adv.shape, *([1] * (len(shape) - adv.ndim))).expand(shape)  # prefix -> P
    return _Flat(
        log_ratio=(inp.log_prob.float() - inp.log_prob_old.detach().float()).reshape(n),
        adv=adv.reshape(n),
        mean=inp.mean.float().reshape(n, -1),  # P + latent -> [N, D]
        mean_old=inp.mean_old.detach().float().reshape(n, -1),
        std=_per_term(inp.std, inp).detach(),
    )


def stable_ratio(log_ratio: Tensor) -> Tensor:
    """``exp(clamp(log_ratio, -MAX_LOG_RATIO, MAX_LOG_RATIO))``: finite, no NaN/inf."""
    return torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


def _ratio_metrics(
    ratio: Tensor, f: _Flat, reduction: str, kl: Tensor | None = None
) -> dict[str, float]:
    """ratio/{mean,min,max} and kl/old_new_{mean,max}; ``kl`` [N]: the exact KL if already
    computed (Flow-DPPO's divergence), else computed here. One conversion to python floats."""
    if kl is None:
        kl = gaussian_kl(f.mean.detach(), f.mean_old, f.std, reduction)
    r = ratio.detach()
    r_min, r_max = torch.aminmax(r)
    values = torch.stack([r.mean(), r_min, r_max, kl.mean(), kl.max()]).tolist()
    names = ("ratio/mean", "ratio/min", "ratio/max", "kl/old_new_mean", "kl/old_new_max")
    return dict(zip(names, values, strict=True))


def dppo_drop(div: Tensor, log_ratio: Tensor, adv: Tensor, delta: float) -> Tensor:
    """Flow-DPPO's mask, per term: ``(D >= delta) AND ((ρ > 1 AND A > 0) OR (ρ < 1 AND A < 0))``.

    ``div`` the exact divergence, ``log_ratio`` = log ρ (ρ > 1 tested on it, unclamped), ``adv``
    the advantage, all [N]; returns bool [N] (True = dropped from the loss)."""
    up, down = log_ratio > 0, log_ratio < 0  # ρ > 1, ρ < 1, exactly
    return (div >= delta) & ((up & (adv > 0)) | (down & (adv < 0)))


@register_loss("flow_dppo", FlowDPPOParams)
def flow_dppo_loss(
    inp: LossInputs,
    *,
    delta: float,
    divergence: str = "kl",
    reduction: str = "mean",
    mask: str = "asymmetric",
) -> LossOutput:
    """Flow-DPPO: the asymmetric divergence mask (docs/algorithm.md §4, the paper's method).

    ``drop = (D >= delta) AND ((ρ > 1 AND A > 0) OR (ρ < 1 AND A < 0))`` with D the exact
    per-term divergence between π_old and π_θ (``divergence`` "kl" in the ``reduction`` unit, or
    "tv", a probability); ``L = (1/N) sum_terms [drop ? 0 : -A ρ]``. Masked terms stay in the
    denominator N; the mask and A carry no gradient; the gradient flows through ρ only.

    Args:
        inp: LossInputs (``mean_ref`` and ``step_size`` unused).
        delta: δ > 0, in the unit of ``divergence`` (KL: per dimension for "mean"; TV: unit-free).
        divergence: a key of ``DIVERGENCES``.
        reduction: the log-prob reduction; also the KL unit.
        mask: "asymmetric" (above) or "symmetric", an ablation that drops every term with
            ``D >= delta`` whichever way it moved (a hard trust region, PPO-clip's symmetric
            counterpart without its "min").
    """
    check_positive(delta, "delta")
    if mask not in ("asymmetric", "symmetric"):
        raise ValueError(f"mask must be 'asymmetric' or 'symmetric', got {mask!r}")
    check_reduction(reduction)
    div_fn = get_divergence(divergence)
    f = _flatten(inp)
    ratio = stable_ratio(f.log_ratio)
    with torch.no_grad():
        div = div_fn(f.mean.detach(), f.mean_old, f.std, reduction)
        drop = dppo_drop(div, f.log_ratio, f.adv, delta) if mask == "asymmetric" else div >= delta
        pos, neg = f.adv > 0, f.adv < 0
    per_term = torch.where(drop, torch.zeros_like(ratio), -f.adv * ratio)
    loss = per_term.mean()
    metrics = _ratio_metrics(ratio, f, reduction, kl=div if div_fn is gaussian_kl else None)
    with torch.no_grad():  # one conversion to python floats for the six values
        fracs = torch.stack([drop, drop & pos, drop & neg]).float().mean(dim=1)  # [3]
        values = torch.cat([fracs, torch.stack([div.mean(), div.max(), loss])]).tolist()
    names = ["mask/frac", "mask/frac_pos_adv", "mask/frac_neg_adv"]
    names += [f"{divergence}/old_new_mean", f"{divergence}/old_new_max", "loss/policy"]
    metrics.update(zip(names, values, strict=True))
    return LossOutput(loss, metrics)


def _clipped_terms(
    ratio: Tensor, adv: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, float]]:
    """PPO terms ``max(-A ρ, -A clip(ρ, 1 - ε, 1 + ε))`` [N] and the clip fractions."""
    per_term = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))
    r = ratio.detach()
    high = (r > 1.0 + clip_range).float().mean().item()
    low = (r < 1.0 - clip_range).float().mean().item()
    return per_term, {"clip/frac": high + low, "clip/frac_high": high, "clip/frac_low": low}


@register_loss("ratio_clip", RatioClipParams)
def ratio_clip_loss(inp: LossInputs, *, clip_range: float, reduction: str = "mean") -> LossOutput:
    """Flow-GRPO's PPO ratio clipping (docs/algorithm.md §4, baseline).

    ``L = mean_terms max(-A ρ, -A clip(ρ, 1 - ε, 1 + ε))`` with ε = ``clip_range`` > 0 (a ratio
    offset; its meaning depends on the log-prob ``reduction``, peers: 1e-4 with "mean").
    ``reduction`` only sets the unit of the KL metric.
    """
    check_positive(clip_range, "clip_range")
    check_reduction(reduction)
    f = _flatten(inp)
    ratio = stable_ratio(f.log_ratio)
    per_term, metrics = _clipped_terms(ratio, f.adv, clip_range)
    loss = per_term.mean()
    metrics.update(_ratio_metrics(ratio, f, reduction))
    metrics["loss/policy"] = loss.item()
    return LossOutput(loss, metrics)


@register_loss("grpo_guard", GRPOGuardParams)
def grpo_guard_loss(
    inp: LossInputs, *, clip_range: float, reduction: str = "mean", scale: str = "term"
) -> LossOutput:
    """GRPO-Guard: RatioNorm ratio + per-step loss re-weighting (docs/algorithm.md §4, baseline).

    ``ρ = exp((Δlogp + reduce_d(Δμ^2) / (2 c^2)) * c)`` with ``Δμ = μ_θ - μ_old`` (gradient flows
    through both Δlogp and Δμ), then ``L = mean[max(-A ρ, -A clip(ρ, 1 ± ε)) / |Δ|]``.

    Interpretation (GRPO-Guard, arXiv 2510.22319; read in verl-omni and Flow-Factory): ``c`` is
    the step std ``s_k = g_k sqrt(|Δ_k|)`` and ``|Δ| = sigma - sigma_next`` the step size
    (``inp.step_size``; verl-omni divides by ``mean(sqrt(-dt))^2``). The bias term cancels the
    ``-Δμ^2/(2 s^2)`` part of Δlogp that pulls the mean of ρ below 1. ``scale="term"`` (default)
    uses each term's own ``c = s`` and ``|Δ|``: all samples of one step share them, so this equals
    the spec's batch means when a mini-batch holds one step, and stays right when a mini-batch
    mixes steps. ``scale="batch"`` uses ``c = mean(s)`` and ``mean(|Δ|)`` over the mini-batch,
    literally (verl-omni). The trainer's ``loss.guard_scale`` chooses. Defined in the "mean" unit (ε = 2e-6); with ``"sum"``
    both Δlogp and the bias are D times larger.
    """
    check_positive(clip_range, "clip_range")
    check_reduction(reduction)
    if scale not in ("term", "batch"):
        raise ValueError(f"scale must be one of ['batch', 'term'], got {scale!r}")
    if inp.step_size is None:
        raise ValueError("grpo_guard_loss needs inp.step_size (|Δ| = sigma - sigma_next per term)")
    f = _flatten(inp)
    step = _per_term(inp.step_size, inp).detach()
    c, div_by = (f.std, step) if scale == "term" else (f.std.mean(), step.mean())
    sq = (f.mean - f.mean_old) ** 2  # [N, D]
    bias = (sq.mean(dim=1) if reduction == "mean" else sq.sum(dim=1)) / (2.0 * c**2)
    ratio = stable_ratio((f.log_ratio + bias) * c)
    per_term, metrics = _clipped_terms(ratio, f.adv, clip_range)
    loss = (per_term / div_by).mean()
    metrics.update(_ratio_metrics(ratio, f, reduction))
    metrics.update({"guard/bias_mean": bias.detach().mean().item(), "loss/policy": loss.item()})
    return LossOutput(loss, metrics)


def reference_kl(inp: LossInputs, reduction: str = "mean") -> Tensor:
    """Mean over terms of the exact ``KL(π_θ ‖ π_ref) = reduce_d (μ_θ - μ_ref)^2 / (2 s^2)`` (§4).

    Returns a float32 scalar, differentiable through ``inp.mean``; needs ``inp.mean_ref``.
    """
    if inp.mean_ref is None:
        raise ValueError("reference_kl needs inp.mean_ref (the reference model's step means)")
    n = inp.num_terms
    std = _per_term(inp.std, inp).detach()
    ref = inp.mean_ref.detach().reshape(n, -1)  # P + latent -> [N, D]
    return gaussian_kl(inp.mean.reshape(n, -1), ref, std, reduction).mean()


def clip_advantages(adv: Tensor, max_abs: float) -> Tensor:
    """``clamp(A, -max_abs, max_abs)`` (Flow-GRPO, Flow-Factory use 5), ``max_abs`` > 0."""
    check_positive(max_abs, "max_abs")
    return adv.clamp(-max_abs, max_abs)


def compute_loss(
    name: str,
    inp: LossInputs,
    *,
    beta: float = 0.0,
    adv_clip: float | None = None,
    **hparams: object,
) -> LossOutput:
    """The loss ``LOSSES[name](inp, **hparams)`` plus ``beta * reference_kl`` when ``beta > 0``.

    ``hparams`` are the fields of the loss's parameter dataclass (``LOSS_PARAMS[name]``; unknown
    or missing ones are a ``ValueError``). ``adv_clip``: clip |A| to this value first (None: no
    clipping). The reference KL uses the loss's ``reduction``. Adds ``kl/ref_mean`` and
    ``loss/total``.
    """
    params = loss_params(name, hparams)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if adv_clip is not None:
        inp = replace(inp, advantages=clip_advantages(inp.advantages, adv_clip))
    kwargs = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    out = LOSSES[name](inp, **kwargs)
    loss, metrics = out.loss, dict(out.metrics)
    if beta > 0:
        kl_ref = reference_kl(inp, str(kwargs.get("reduction", "mean")))
        loss = loss + beta * kl_ref
        metrics["kl/ref_mean"] = kl_ref.item()
    metrics["loss/total"] = loss.item()
    return LossOutput(loss, metrics)
