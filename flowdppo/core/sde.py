"""One denoising step of each sampler, as a Gaussian policy (docs/algorithm.md §2).

Every stochastic sampler draws ``x_next = mean + std * z`` with ``z ~ N(0, I)``, so the step
policy is ``N(mean, std^2 I)`` with a per-sample scalar ``std``. Each kernel is a pure function of
explicit arguments (no hidden step index), so the log-prob of any stored step is one call.

Shared conventions of the kernels ``(x, v, sigma, sigma_next, eta, *, noise, generator, x_next,
reduction) -> StepOutput``:
- ``x``, ``v``: [B, ...] of any rank >= 2 (2-D in tests, 4-D images, 5-D video); cast to float32,
  all maths is float32 whatever the input dtype (bf16 would quantise means at ~1e-5, §3).
- ``sigma``, ``sigma_next``: python floats or tensors [B] with 0 <= sigma_next < sigma <= 1.
- ``x_next`` given: no sampling, the log-prob of that ``x_next`` under the kernel's Gaussian
  (how the trainer recomputes log-probs under new parameters). Otherwise ``x_next = mean +
  std * noise`` with ``noise`` given or drawn from ``generator``.
- ``log_prob``: the full Gaussian log-density, averaged (``"mean"``, per-dimension unit of the
  peers' published thresholds) or summed (``"sum"``) over the non-batch dimensions; [B].
- ``std``: float32 [B]. Where ``std == 0`` the step is deterministic and its ``log_prob`` is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from ._util import check_reduction, expand_like, per_sample, reduce_over_sample

_LOG_2PI = math.log(2.0 * math.pi)


class StepOutput(NamedTuple):
    """Result of one step: ``x_next``, ``mean`` [B, ...]; ``log_prob``, ``std`` [B]; float32."""

    x_next: Tensor
    log_prob: Tensor
    mean: Tensor
    std: Tensor


class StepKernel(Protocol):
    """Signature shared by every sampler step (see the module docstring)."""

    def __call__(
        self,
        x: Tensor,
        v: Tensor,
        sigma: float | Tensor,
        sigma_next: float | Tensor,
        eta: float = ...,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        x_next: Tensor | None = None,
        reduction: str = "mean",
    ) -> StepOutput: ...


# (x [B, ...], v [B, ...], sigma [B], sigma_next [B], eta) -> (mean [B, ...], std [B])
Moments = Callable[[Tensor, Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]


def gaussian_log_prob(
    x: Tensor, mean: Tensor, std: float | Tensor, reduction: str = "mean"
) -> Tensor:
    """Log-density of ``N(mean, std^2 I)`` at ``x``, reduced per sample.

    ``log N(x; mu, s^2) = -(x - mu)^2 / (2 s^2) - log s - log(2 pi) / 2`` per dimension, then the
    mean (per-dimension unit, peers' convention) or the sum over all non-batch dimensions.

    Args:
        x, mean: [B, ...], any dtype (computed in float32).
        std: float > 0 or tensor [B] > 0 (one scalar std per sample).
        reduction: ``"mean"`` or ``"sum"``.
    Returns:
        float32 [B].
    """
    check_reduction(reduction)
    if x.shape != mean.shape:
        raise ValueError(
            f"x and mean must have the same shape, got {list(x.shape)} and {list(mean.shape)}"
        )
    std_b = per_sample(std, x.shape[0], x.device, "std")
    if not (std_b > 0).all():
        raise ValueError(f"std must be > 0, got {std_b.tolist()}")
    return _log_density(x.float(), mean.float(), std_b, reduction)


def _log_density(x: Tensor, mean: Tensor, std: Tensor, reduction: str) -> Tensor:
    """``gaussian_log_prob`` without its checks: float32 x, mean [B, ...], std [B] > 0."""
    s = expand_like(std, x)
    elem = -((x - mean) ** 2) / (2.0 * s**2) - torch.log(s) - 0.5 * _LOG_2PI
    return reduce_over_sample(elem, reduction)


def _step_log_prob(x_next: Tensor, mean: Tensor, std: Tensor, reduction: str) -> Tensor:
    """``gaussian_log_prob`` where ``std > 0``, exactly 0 where ``std == 0`` (deterministic)."""
    positive = std > 0
    if bool(positive.all()):  # every stochastic step: the same values without the masking ops
        return _log_density(x_next, mean, std, reduction)
    safe_std = torch.where(positive, std, torch.ones_like(std))
    lp = _log_density(x_next, mean, safe_std, reduction)
    return torch.where(positive, lp, torch.zeros_like(lp))


def _is_scalar(value: float | Tensor) -> bool:
    """Whether ``value`` is one number for the whole batch (a python number or a 0-d tensor)."""
    return not isinstance(value, Tensor) or value.ndim == 0


def _check_sigmas(s: Tensor, s_next: Tensor, scalar: bool) -> None:
    """0 < sigma <= 1 and 0 <= sigma_next < sigma for the float32 [B] ``s``, ``s_next``; with
    ``scalar`` (each is one value expanded over the batch) tested on python floats."""
    if scalar and s.numel():  # the rollout's case: two numbers, no tensor ops
        a, b = float(s[0]), float(s_next[0])
        ok = 0 <= b < a <= 1
    else:  # 0 <= sigma_next < sigma <= 1 (sigma > 0 follows; NaN fails every comparison)
        ok = bool(((s_next >= 0) & (s_next < s) & (s <= 1)).all())
    if ok:
        return
    if not bool(((s > 0) & (s <= 1)).all()):
        raise ValueError(f"sigma must lie in (0, 1], got {s.tolist()}")
    raise ValueError(
        f"sigma_next must satisfy 0 <= sigma_next < sigma, got sigma={s.tolist()}, "
        f"sigma_next={s_next.tolist()}"
    )


def _run_step(
    moments: Moments,
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float,
    noise: Tensor | None,
    generator: torch.Generator | None,
    x_next: Tensor | None,
    reduction: str,
    stochastic: bool = True,
) -> StepOutput:
    """Validate, compute (mean, std) with ``moments``, then sample or score ``x_next``."""
    check_reduction(reduction)
    if x.ndim < 2 or x.shape != v.shape:
        raise ValueError(
            f"x and v must share a shape [B, ...] of rank >= 2, got {list(x.shape)} and {list(v.shape)}"
        )
    for name, t in (("noise", noise), ("x_next", x_next)):
        if t is not None and t.shape != x.shape:
            raise ValueError(
                f"{name} must have the shape of x {list(x.shape)}, got {list(t.shape)}"
            )
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    s = per_sample(sigma, x.shape[0], x.device, "sigma")
    s_next = per_sample(sigma_next, x.shape[0], x.device, "sigma_next")
    _check_sigmas(s, s_next, _is_scalar(sigma) and _is_scalar(sigma_next))
    mean, std = moments(x.float(), v.float(), s, s_next, eta)
    if x_next is None:
        if not stochastic:
            x_next = mean
        else:
            if noise is None:
                noise = torch.randn(
                    x.shape, generator=generator, device=x.device, dtype=torch.float32
                )
            x_next = mean + expand_like(std, mean) * noise.float()
    x_next = x_next.float()
    if not stochastic:  # the ODE: std 0 everywhere, so the log-prob is 0 (nothing to compute)
        return StepOutput(x_next, torch.zeros_like(std), mean, std)
    return StepOutput(x_next, _step_log_prob(x_next, mean, std, reduction), mean, std)


def _ode_moments(
    x: Tensor, v: Tensor, s: Tensor, s_next: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    delta = expand_like(s_next - s, x)  # Δ = σ' - σ < 0, [B, 1, ...]
    return x + v * delta, torch.zeros_like(s)


def _sde_moments(
    x: Tensor, v: Tensor, s: Tensor, s_next: Tensor, g: Tensor
) -> tuple[Tensor, Tensor]:
    """Euler–Maruyama step of the reverse SDE with diffusion g [B] (Flow-SDE and Dance-SDE)."""
    delta = s_next - s  # [B], < 0
    sig, d, gg = expand_like(s, x), expand_like(delta, x), expand_like(g, x)
    mean = x + (v + gg**2 / (2.0 * sig) * (x + (1.0 - sig) * v)) * d
    return mean, g * torch.sqrt(-delta)


def _flow_sde_moments(
    x: Tensor, v: Tensor, s: Tensor, s_next: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    # g = η sqrt(σ / (1 - σ)) is infinite at σ = 1; there (only) the denominator becomes
    # 1 - σ_next, the peers' "use 1 - σ_1" rule (docs/algorithm.md §2).
    denom = torch.where(s == 1.0, 1.0 - s_next, 1.0 - s)
    return _sde_moments(x, v, s, s_next, eta * torch.sqrt(s / denom))


def _dance_sde_moments(
    x: Tensor, v: Tensor, s: Tensor, s_next: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    return _sde_moments(x, v, s, s_next, torch.full_like(s, eta))


def _cps_moments(
    x: Tensor, v: Tensor, s: Tensor, s_next: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    if eta > 1:
        raise ValueError(
            f"eta must lie in [0, 1] for CPS (std = sigma_next * sin(eta * pi / 2)), got {eta!r}"
        )
    sig, sig_next = expand_like(s, x), expand_like(s_next, x)
    x0_hat = x - sig * v
    eps_hat = x + (1.0 - sig) * v
    # sqrt(σ'^2 - std^2) = σ' cos(ηπ/2) exactly, without the cancellation of the difference.
    mean = (1.0 - sig_next) * x0_hat + sig_next * math.cos(eta * math.pi / 2) * eps_hat
    return mean, s_next * math.sin(eta * math.pi / 2)


def ode_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float = 0.0,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    x_next: Tensor | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """Euler step of the probability-flow ODE (docs/algorithm.md §1, §2).

    ``mean = x + v * Δ`` with ``Δ = sigma_next - sigma``; ``std = 0``. Deterministic: ``eta``,
    ``noise`` and ``generator`` are ignored (no random number is drawn), ``x_next = mean`` and
    ``log_prob`` is zeros [B] (a point mass has no density; ODE steps are never trained).
    """
    return _run_step(
        _ode_moments,
        x,
        v,
        sigma,
        sigma_next,
        eta,
        noise,
        generator,
        x_next,
        reduction,
        stochastic=False,
    )


def flow_sde_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float = 0.7,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    x_next: Tensor | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """Flow-SDE step of Flow-GRPO (docs/algorithm.md §2, Flow-GRPO eq. for the reverse SDE).

    ``g = eta * sqrt(sigma / (1 - sigma))`` (at ``sigma == 1`` the denominator is
    ``1 - sigma_next``, the peers' 1 - σ_1 rule), ``Δ = sigma_next - sigma``,
    ``mean = x + [v + g^2 / (2 sigma) * (x + (1 - sigma) v)] * Δ``, ``std = g * sqrt(-Δ)``.
    Shapes and conventions: module docstring.
    """
    return _run_step(
        _flow_sde_moments, x, v, sigma, sigma_next, eta, noise, generator, x_next, reduction
    )


def dance_sde_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float = 0.7,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    x_next: Tensor | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """Dance-SDE step of DanceGRPO: the Flow-SDE step with a constant ``g = eta`` (§2).

    ``mean = x + [v + eta^2 / (2 sigma) * (x + (1 - sigma) v)] * Δ``, ``std = eta * sqrt(-Δ)``.
    """
    return _run_step(
        _dance_sde_moments, x, v, sigma, sigma_next, eta, noise, generator, x_next, reduction
    )


def cps_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float = 0.7,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    x_next: Tensor | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """Coefficient-preserving sampling step (CPS, docs/algorithm.md §2), ``eta`` in [0, 1].

    ``x0_hat = x - sigma v``, ``eps_hat = x + (1 - sigma) v``, ``std = sigma_next sin(eta pi/2)``,
    ``mean = (1 - sigma_next) x0_hat + sqrt(sigma_next^2 - std^2) eps_hat``. ``log_prob`` is the
    true Gaussian log-density (**Decision** §2). At ``sigma_next = 0`` std is 0 and log_prob 0.
    """
    return _run_step(
        _cps_moments, x, v, sigma, sigma_next, eta, noise, generator, x_next, reduction
    )


def cps_peer_parity_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float = 0.7,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    x_next: Tensor | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """CPS with the peers' log-prob, for parity runs only: ``-reduce((x_next - mean)^2)``.

    The ``1/(2 std^2)`` factor and the normalising constant are dropped, so
    ``exp(log_prob - log_prob_old)`` is *not* a likelihood ratio (docs/algorithm.md §2). Sampling,
    mean and std are those of ``cps_step``.
    """
    out = cps_step(
        x,
        v,
        sigma,
        sigma_next,
        eta,
        noise=noise,
        generator=generator,
        x_next=x_next,
        reduction=reduction,
    )
    log_prob = -reduce_over_sample((out.x_next - out.mean) ** 2, reduction)
    return out._replace(log_prob=log_prob)


SAMPLERS: dict[str, StepKernel] = {
    "ode": ode_step,
    "flow_sde": flow_sde_step,
    "dance_sde": dance_sde_step,
    "cps": cps_step,
    "cps_peer_parity": cps_peer_parity_step,
}


def get_sampler(name: str) -> StepKernel:
    """The step kernel registered as ``name`` in ``SAMPLERS``; ``ValueError`` if unknown."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
