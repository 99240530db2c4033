"""Exact Gaussian KL and TV of flowdppo.core.divergence against torch, Monte Carlo and quadrature."""

from __future__ import annotations

import math

import pytest
import torch

from flowdppo.core.divergence import DIVERGENCES, gaussian_kl, gaussian_tv, get_divergence


def _means(shape=(3, 4, 5), scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g)
    return p, p + scale * torch.randn(shape, generator=g)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_kl_matches_torch_kl_divergence(reduction):
    p, q = _means()
    std = torch.tensor([0.2, 0.5, 1.3])
    s = std.view(3, 1, 1)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(p, s), torch.distributions.Normal(q, s)
    )
    expected = ref.flatten(1).sum(1) / (1 if reduction == "sum" else 20)
    torch.testing.assert_close(gaussian_kl(p, q, std, reduction), expected, atol=1e-5, rtol=1e-5)


def test_kl_hand_value_and_symmetry():
    """Δμ = (0.3, 0.4): ||Δμ||² = 0.25, s = 0.5 -> KL_sum = 0.25 / 0.5 = 0.5, KL_mean = 0.25."""
    p, q = torch.tensor([[0.3, 0.4]]), torch.zeros(1, 2)
    assert gaussian_kl(p, q, 0.5, "sum").item() == pytest.approx(0.5, abs=1e-7)
    assert gaussian_kl(q, p, 0.5, "mean").item() == pytest.approx(0.25, abs=1e-7)


def test_kl_matches_monte_carlo_estimate():
    """E_{x~p}[log p(x) - log q(x)] with 200k draws, 1 dimension, s = 0.7, Δμ = 0.5: KL = 0.2551."""
    g = torch.Generator().manual_seed(0)
    s, d = 0.7, 0.5
    x = s * torch.randn(200_000, generator=g, dtype=torch.float64)
    p, q = torch.distributions.Normal(0.0, s), torch.distributions.Normal(d, s)
    mc = (p.log_prob(x) - q.log_prob(x)).mean().item()
    exact = gaussian_kl(torch.zeros(1, 1), torch.full((1, 1), d), s, "sum").item()
    assert exact == pytest.approx(d * d / (2 * s * s), abs=1e-6)
    assert mc == pytest.approx(exact, abs=0.01)  # MC standard error d/s/sqrt(n) = 0.0016


def test_log_ratio_of_one_action_is_a_noisy_one_sample_kl_estimate():
    """docs/algorithm.md §7, as benchmarks/shapes_ratio_vs_kl.py uses it: for x ~ N(μ_old, s²I) in D
    dimensions (the mean reduction), log ρ = log N(x; μ_θ) - log N(x; μ_old) has mean -KL and
    standard deviation sqrt(2·KL/D), KL = |Δμ|²/(2s²D); at an RL-sized KL the noise is ≫ KL."""
    from flowdppo.core.sde import gaussian_log_prob

    g = torch.Generator().manual_seed(0)
    n, dim, s = 20_000, 3072, 0.7
    mu_old = torch.randn(1, dim, generator=g, dtype=torch.float64)
    mu_new = mu_old + 2e-4 * torch.randn(1, dim, generator=g, dtype=torch.float64)
    x = mu_old + s * torch.randn(n, dim, generator=g, dtype=torch.float64)
    # float64 by hand: gaussian_log_prob computes in float32, whose rounding of the two
    # log-densities (≈ 1e-7 apart here) is the size of the effect being measured
    log_rho = ((x - mu_old) ** 2 - (x - mu_new) ** 2).mean(1) / (2 * s * s)
    kl = gaussian_kl(mu_old, mu_new, s, "mean").item()
    assert kl == pytest.approx(((mu_new - mu_old) ** 2).sum().item() / (2 * s * s * dim), rel=1e-5)
    assert log_rho.mean().item() == pytest.approx(-kl, abs=4 * math.sqrt(2 * kl / dim / n))
    assert log_rho.std().item() == pytest.approx(math.sqrt(2 * kl / dim), rel=0.03)
    assert log_rho.std().item() > 10 * kl  # the estimate's noise dwarfs what it estimates
    # and the library's own log-density agrees with the float64 formula to float32 resolution
    lp = gaussian_log_prob(x[:4], mu_new.expand(4, -1), s) - gaussian_log_prob(
        x[:4], mu_old.expand(4, -1), s
    )
    torch.testing.assert_close(lp.double(), log_rho[:4], atol=2e-6, rtol=0)


def test_tv_matches_numerical_integral_along_the_mean_difference():
    """The Gaussians differ only along Δμ: TV = ∫ |N(t; 0, s²) - N(t; ||Δμ||, s²)| / 2 dt."""
    p, q = _means((2, 3, 4), scale=0.4)
    std = torch.tensor([0.5, 1.5])
    tv = gaussian_tv(p, q, std)
    t = torch.linspace(-20, 25, 200_001, dtype=torch.float64)
    for i in range(2):
        d = (p[i] - q[i]).double().norm()
        s = float(std[i])
        a = torch.distributions.Normal(0.0, s).log_prob(t).exp()
        b = torch.distributions.Normal(d, s).log_prob(t).exp()
        integral = torch.trapezoid((a - b).abs() / 2, t).item()
        assert tv[i].item() == pytest.approx(integral, abs=1e-6)


def test_tv_hand_values():
    """||Δμ|| = 2s -> TV = 2Φ(1) - 1 = 0.682689; identical means -> 0."""
    p = torch.tensor([[0.6, 0.8], [0.1, 0.1]])
    q = torch.tensor([[0.0, 0.0], [0.1, 0.1]])
    torch.testing.assert_close(
        gaussian_tv(p, q, 0.5), torch.tensor([0.682689, 0.0]), atol=1e-6, rtol=0
    )


def test_float32_for_bf16_inputs_and_gradient_at_zero_difference():
    p = torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True)
    q = torch.zeros(2, 3, dtype=torch.bfloat16)
    kl, tv = gaussian_kl(p, q, 0.1), gaussian_tv(p, q, 0.1)
    assert kl.dtype == tv.dtype == torch.float32
    (kl.sum() + tv.sum()).backward()
    assert p.grad is not None and torch.equal(p.grad.float(), torch.zeros(2, 3))


def test_registry_and_bad_inputs():
    assert set(DIVERGENCES) == {"kl", "tv"}
    p, q = _means()
    torch.testing.assert_close(get_divergence("tv")(p, q, 0.5, "sum"), gaussian_tv(p, q, 0.5))
    with pytest.raises(ValueError, match=r"divergence must be one of \['kl', 'tv'\], got 'js'"):
        get_divergence("js")
    with pytest.raises(ValueError, match="reduction must be one of"):
        gaussian_kl(p, q, 0.5, "max")
    with pytest.raises(ValueError, match="mean_p and mean_q must share a shape"):
        gaussian_kl(p, q[:, :2], 0.5)
    with pytest.raises(ValueError, match=r"std must be a float or a tensor of shape \[3\]"):
        gaussian_tv(p, q, torch.ones(2))
    assert math.isfinite(gaussian_kl(p, q, torch.full((3,), 0.5)).sum().item())


@pytest.mark.parametrize("name", ["kl", "tv"])
@pytest.mark.parametrize("std", [0.0, torch.tensor([0.3, 0.0]), torch.tensor([0.3, math.nan])])
def test_a_step_of_std_zero_is_refused_with_a_message(name, std):
    """η = 0, an ODE step or CPS's last step: std 0, no density; the KL would be 0/0 = NaN."""
    p, q = torch.zeros(2, 3), torch.zeros(2, 3)
    message = r"std must be > 0 for a divergence, got \[.*\]: a step of std 0 .* cannot be trained"
    with pytest.raises(ValueError, match=message):
        get_divergence(name)(p, q, std, "mean")
