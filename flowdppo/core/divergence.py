"""Exact divergences between two step policies that share their std (docs/algorithm.md §3).

The old and new policies of one step are ``N(mean_p, s^2 I)`` and ``N(mean_q, s^2 I)`` with the
same per-sample std ``s`` (it depends only on the schedule and the sampler, not on θ), so:
- ``KL = ||mean_p - mean_q||^2 / (2 s^2)`` (symmetric), or that divided by the dimension D for
  ``reduction="mean"`` (the per-dimension unit of the peers' thresholds δ = 1e-5, 1e-6);
- ``TV = 2 Phi(||mean_p - mean_q|| / (2 s)) - 1`` (a probability in [0, 1], no reduction).
Always float32 (bf16 means quantise at ~1e-5, the size of δ itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._util import check_reduction, per_sample, reduce_over_sample

# (mean_p [B, ...], mean_q [B, ...], std [B] or float, reduction) -> divergence [B]
Divergence = Callable[[Tensor, Tensor, "float | Tensor", str], Tensor]


def _diff(mean_p: Tensor, mean_q: Tensor) -> Tensor:
    if mean_p.shape != mean_q.shape or mean_p.ndim < 1:
        raise ValueError(
            f"mean_p and mean_q must share a shape [B, ...], got {list(mean_p.shape)} and {list(mean_q.shape)}"
        )
    return mean_p.float() - mean_q.float()


def _std(std: float | Tensor, diff: Tensor) -> Tensor:
    """The std as float32 [B], refused unless > 0 everywhere: a step of std 0 (η = 0, an ODE
    step, CPS's last step) is deterministic, has no density, and its divergence is 0/0."""
    s = per_sample(std, diff.shape[0], diff.device, "std")
    if not bool((s > 0).all()):  # NaN fails too
        raise ValueError(
            f"std must be > 0 for a divergence, got {s.tolist()}: a step of std 0 (η = 0, an "
            "ODE step, CPS's last step) is deterministic and cannot be trained"
        )
    return s


def gaussian_kl(
    mean_p: Tensor, mean_q: Tensor, std: float | Tensor, reduction: str = "mean"
) -> Tensor:
    """KL between ``N(mean_p, s^2 I)`` and ``N(mean_q, s^2 I)`` (docs/algorithm.md §3).

    ``KL = sum_d (mean_p - mean_q)^2 / (2 s^2)`` for ``"sum"``; ``"mean"`` divides by D.
    Symmetric in p and q because the stds are equal.

    Args:
        mean_p, mean_q: [B, ...] (any dtype; computed in float32).
        std: float or tensor [B], > 0 (``ValueError`` otherwise, quoting the values).
        reduction: ``"mean"`` (per dimension) or ``"sum"``.
    Returns:
        float32 [B], differentiable in both means.
    """
    check_reduction(reduction)
    diff = _diff(mean_p, mean_q)
    s = _std(std, diff)
    return reduce_over_sample(diff**2, reduction) / (2.0 * s**2)


def gaussian_tv(mean_p: Tensor, mean_q: Tensor, std: float | Tensor) -> Tensor:
    """Total variation between ``N(mean_p, s^2 I)`` and ``N(mean_q, s^2 I)`` (docs/algorithm.md §3).

    ``TV = 2 Phi(||mean_p - mean_q|| / (2 s)) - 1 = erf(||Δμ|| / (2 sqrt(2) s))``: the two
    Gaussians differ only along Δμ, where they are 1-D normals ``||Δμ||`` apart.

    Args:
        mean_p, mean_q: [B, ...]; std: float or tensor [B], > 0 (``ValueError`` otherwise).
    Returns:
        float32 [B] in [0, 1].
    """
    diff = _diff(mean_p, mean_q)
    s = _std(std, diff)
    dist = torch.linalg.vector_norm(diff.reshape(diff.shape[0], -1), dim=1)  # [B, D] -> [B]
    return torch.erf(dist / (2.0 * math.sqrt(2.0) * s))


def _tv_any_reduction(
    mean_p: Tensor, mean_q: Tensor, std: float | Tensor, reduction: str = "mean"
) -> Tensor:
    """``gaussian_tv`` with the registry's signature; TV is unit-free, ``reduction`` is ignored."""
    check_reduction(reduction)
    return gaussian_tv(mean_p, mean_q, std)


DIVERGENCES: dict[str, Divergence] = {"kl": gaussian_kl, "tv": _tv_any_reduction}


def get_divergence(name: str) -> Divergence:
    """The divergence registered as ``name`` in ``DIVERGENCES``; ``ValueError`` if unknown."""
    if name not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {name!r}")
    return DIVERGENCES[name]
