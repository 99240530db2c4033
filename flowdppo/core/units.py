"""Porting the peers' trust-region settings into ours (docs/algorithm.md, "Porting a peer's δ,
ε and β").

Ours: a step's KL is ``mean_d (μ_θ − μ_old)² / (2 s²)`` (``reduction="mean"``), ``s`` the
Flow-SDE std ``η·sqrt(σ/(1−σ))·sqrt(|Δ|)`` with ``1 − σ_next`` in the denominator at σ = 1.
UniRL's FlowDPPO divides by the square of ``η·sqrt(σ/(1 − min(σ, 0.99)))·sqrt(|Δ|)``; Flow-GRPO's
KL penalty by ``2·(η·sqrt(σ/(1−σ)))²``, without the step's ``|Δ|``. Both differ from ours only by
a per-step scalar, computed here from the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _g2(sigma: float, sigma_next: float, eta: float, clamp: float | None) -> float:
    """``g²`` of the Flow-SDE: ours (clamp None: ``1 − σ_next`` at σ = 1) or UniRL's clamp."""
    if clamp is not None:
        return eta**2 * sigma / (1 - min(sigma, clamp))
    denominator = 1 - sigma_next if sigma >= 1 else 1 - sigma
    return eta**2 * sigma / denominator


def unirl_kl_factor(sigma: float, sigma_next: float) -> float:
    """KL_ours / KL_UniRL of one Flow-SDE step (``add_kl_coefficient: true``): UniRL's step
    variance over ours. 1 where σ ≤ 0.99; at σ = 1 (a schedule's first step) UniRL's variance is
    ``100·η²|Δ|`` and ours ``η²|Δ| / (1 − σ_next)``, so the factor is ``100·(1 − σ_next)``:
    3.57 at T = 10, shift 3 (σ_1 = 0.9643). Our KL of a move is that factor × UniRL's."""
    return _g2(sigma, sigma_next, 1.0, 0.99) / _g2(sigma, sigma_next, 1.0, None)


def delta_from_unirl(delta: float, sigmas: Sequence[float], steps: Sequence[int]) -> list[float]:
    """Our δ at each trained step that masks what UniRL's ``kl_mask_threshold = delta`` masks.
    Ours is one δ for every step: equal to ``delta`` except where a step starts at σ = 1."""
    return [delta * unirl_kl_factor(sigmas[k], sigmas[k + 1]) for k in steps]


def beta_from_flow_grpo(beta: float, sigmas: Sequence[float], steps: Sequence[int]) -> float:
    """Our ``loss.beta`` for Flow-GRPO's ``train.beta``: its KL is ours × ``|Δ_k|``, so the same
    penalty is ``beta × |Δ_k|``, averaged over the trained steps (ours is one β for all)."""
    if not steps:
        raise ValueError("beta_from_flow_grpo: no trained steps given")
    return beta * math.fsum(sigmas[k] - sigmas[k + 1] for k in steps) / len(steps)
