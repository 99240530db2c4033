"""Porting peers' settings (``flowdppo.core.units``): each conversion against the peer's own
formula written out for one Flow-SDE step, and our KL from ``gaussian_kl`` with the std of our
own ``flow_sde_step``."""

from __future__ import annotations

import math

import pytest
import torch

from flowdppo.core import flow_sde_step, gaussian_kl, shifted_sigmas
from flowdppo.core.units import beta_from_flow_grpo, delta_from_unirl, unirl_kl_factor

ETA = 0.7
SIG = shifted_sigmas(10, 3.0).tolist()


def _our_kl(d_mu: torch.Tensor, k: int) -> float:
    x = torch.zeros(1, *d_mu.shape)
    std = flow_sde_step(x, x, SIG[k], SIG[k + 1], ETA, noise=torch.zeros_like(x)).std
    return float(gaussian_kl(d_mu[None], torch.zeros_like(d_mu)[None], std))


@pytest.mark.parametrize("k", [0, 1, 3])
def test_unirl_kl_is_ours_divided_by_the_factor(k):
    d_mu = torch.linspace(-1e-3, 2e-3, 48).reshape(3, 4, 4)
    s, s_next = SIG[k], SIG[k + 1]
    # UniRL's _gaussian_kl_div with add_kl_coefficient, written out: mean over C, H, W.
    std_dev_t = math.sqrt(s / (1.0 - min(s, 0.99))) * ETA
    sigma_t = std_dev_t * math.sqrt(s - s_next)
    unirl = float((d_mu.double() ** 2 / (2 * sigma_t**2)).mean())
    ours = _our_kl(d_mu, k)
    assert ours == pytest.approx(unirl * unirl_kl_factor(s, s_next), rel=1e-5)
    assert unirl_kl_factor(s, s_next) == (pytest.approx(100 * (1 - SIG[1])) if k == 0 else 1.0)
    assert delta_from_unirl(1e-5, SIG, [k]) == [pytest.approx(1e-5 * unirl_kl_factor(s, s_next))]


@pytest.mark.parametrize("k", [0, 2])
def test_flow_grpo_kl_is_ours_times_the_step_size(k):
    d_mu = torch.linspace(-1e-3, 2e-3, 48).reshape(3, 4, 4)
    s, s_next = SIG[k], SIG[k + 1]
    # Flow-GRPO's kl_loss, written out: ((μ − μ_ref)²).mean(C, H, W) / (2 std_dev_t²), with
    # std_dev_t = sqrt(σ / (1 − σ')) · η, σ' = σ except at σ = 1, where it is sigmas[1] (as ours).
    denom = 1 - (SIG[1] if s >= 1 else s)
    std_dev_t = math.sqrt(s / denom) * ETA
    flow_grpo = float((d_mu.double() ** 2).mean() / (2 * std_dev_t**2))
    assert flow_grpo == pytest.approx(_our_kl(d_mu, k) * (s - s_next), rel=1e-5)
    assert beta_from_flow_grpo(0.04, SIG, [k]) == pytest.approx(0.04 * (s - s_next))
    assert beta_from_flow_grpo(0.04, SIG, [0, 2]) == pytest.approx(
        0.04 * ((SIG[0] - SIG[1]) + (SIG[2] - SIG[3])) / 2
    )
