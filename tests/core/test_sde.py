"""Step kernels of flowdppo.core.sde against formulas written out independently here.

Each expected value is computed with plain python ``math`` on one sigma pair, from the table of
docs/algorithm.md §2, not by calling the module's helpers.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowdppo.core import sde
from flowdppo.core.sde import (
    SAMPLERS,
    cps_peer_parity_step,
    cps_step,
    dance_sde_step,
    flow_sde_step,
    gaussian_log_prob,
    get_sampler,
    ode_step,
)

ATOL = 1e-6  # float32 arithmetic on O(1) values


def _xv(shape=(4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _sde_expected(x, v, sigma, sigma_next, g):
    """Euler–Maruyama of the reverse SDE: x + [v + g²/(2σ)(x + (1-σ)v)]Δ, std g·sqrt(-Δ)."""
    d = sigma_next - sigma
    return x + (v + g * g / (2 * sigma) * (x + (1 - sigma) * v)) * d, g * math.sqrt(-d)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_flow_sde_mean_and_std(as_tensor):
    x, v = _xv()
    sigma, sigma_next, eta = 0.6, 0.45, 0.7
    g = eta * math.sqrt(sigma / (1 - sigma))  # 0.7 * sqrt(1.5) = 0.857321...
    mean, std = _sde_expected(x, v, sigma, sigma_next, g)
    s = torch.full((4,), sigma) if as_tensor else sigma
    s_next = torch.full((4,), sigma_next) if as_tensor else sigma_next
    out = flow_sde_step(x, v, s, s_next, eta, noise=torch.zeros_like(x))
    torch.testing.assert_close(out.mean, mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.std, torch.full((4,), std), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.x_next, mean, atol=ATOL, rtol=0)  # zero noise


def test_flow_sde_at_sigma_one_uses_one_minus_sigma_next():
    """At σ = 1, g = η·sqrt(1/(1-σ_1)), so std = g·sqrt(1-σ_1) = η exactly."""
    x, v = _xv()
    sigma_next, eta = 0.9, 0.7
    g = eta * math.sqrt(1.0 / (1 - sigma_next))
    mean, _ = _sde_expected(x, v, 1.0, sigma_next, g)
    out = flow_sde_step(x, v, 1.0, sigma_next, eta)
    torch.testing.assert_close(out.mean, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std, torch.full((4,), eta), atol=ATOL, rtol=0)
    assert torch.isfinite(out.log_prob).all()


def test_dance_sde_mean_and_std():
    x, v = _xv()
    mean, std = _sde_expected(x, v, 0.8, 0.5, 0.7)  # g = η
    out = dance_sde_step(x, v, 0.8, 0.5, 0.7, noise=torch.zeros_like(x))
    torch.testing.assert_close(out.mean, mean, atol=ATOL, rtol=0)
    assert abs(std - 0.7 * math.sqrt(0.3)) < 1e-12
    torch.testing.assert_close(out.std, torch.full((4,), std), atol=ATOL, rtol=0)


def test_cps_mean_and_std():
    x, v = _xv()
    sigma, sigma_next, eta = 0.7, 0.4, 0.8
    std = sigma_next * math.sin(eta * math.pi / 2)  # 0.4 * sin(0.4π) = 0.380423...
    x0_hat, eps_hat = x - sigma * v, x + (1 - sigma) * v
    mean = (1 - sigma_next) * x0_hat + math.sqrt(sigma_next**2 - std**2) * eps_hat
    out = cps_step(x, v, sigma, sigma_next, eta)
    torch.testing.assert_close(out.mean, mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.std, torch.full((4,), std), atol=ATOL, rtol=0)


def test_ode_step_is_euler_and_deterministic():
    x, v = _xv()
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    out = ode_step(x, v, 0.5, 0.3, generator=g)
    torch.testing.assert_close(out.x_next, x + v * (0.3 - 0.5), atol=ATOL, rtol=0)
    assert torch.equal(out.std, torch.zeros(4)) and torch.equal(out.log_prob, torch.zeros(4))
    assert torch.equal(g.get_state(), state)  # no random number drawn


def test_cps_last_step_has_zero_std_and_zero_log_prob():
    x, v = _xv()
    out = cps_step(x, v, 0.2, 0.0, 0.7)
    torch.testing.assert_close(out.x_next, x - 0.2 * v, atol=ATOL, rtol=0)  # = x0_hat
    assert torch.equal(out.std, torch.zeros(4)) and torch.equal(out.log_prob, torch.zeros(4))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gaussian_log_prob_matches_torch_normal(reduction):
    x, mean = _xv((3, 2, 5))
    std = torch.tensor([0.3, 1.0, 2.5])
    ref = torch.distributions.Normal(mean, std.view(3, 1, 1)).log_prob(x).flatten(1)
    expected = ref.mean(1) if reduction == "mean" else ref.sum(1)
    torch.testing.assert_close(
        gaussian_log_prob(x, mean, std, reduction), expected, atol=1e-5, rtol=1e-6
    )


@pytest.mark.parametrize("name", ["flow_sde", "dance_sde", "cps"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kernel_log_prob_of_given_x_next_matches_torch_normal(name, reduction):
    x, v = _xv((2, 3, 4, 4))
    x_next = x + 0.1 * v
    out = get_sampler(name)(x, v, 0.75, 0.5, 0.7, x_next=x_next, reduction=reduction)
    ref = torch.distributions.Normal(out.mean, out.std.view(2, 1, 1, 1)).log_prob(x_next).flatten(1)
    expected = ref.mean(1) if reduction == "mean" else ref.sum(1)
    torch.testing.assert_close(out.log_prob, expected, atol=1e-4, rtol=1e-6)
    assert torch.equal(out.x_next, x_next)


def test_sampling_uses_given_noise_and_generator_reproducibly():
    x, v = _xv()
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    out = flow_sde_step(x, v, 0.6, 0.4, 0.7, noise=z)
    torch.testing.assert_close(out.x_next, out.mean + out.std[:, None] * z, atol=ATOL, rtol=0)
    a = flow_sde_step(x, v, 0.6, 0.4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.x_next, out.x_next, atol=ATOL, rtol=0)


def test_per_sample_sigmas_broadcast_over_5d_latents():
    """Video latents [B, C, F, H, W] with a different sigma per sample equal per-sample calls."""
    x, v = _xv((3, 2, 2, 3, 3))
    sigma, sigma_next = torch.tensor([1.0, 0.7, 0.4]), torch.tensor([0.9, 0.5, 0.1])
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = flow_sde_step(x, v, sigma, sigma_next, noise=z)
    for i in range(3):
        one = flow_sde_step(
            x[i : i + 1], v[i : i + 1], float(sigma[i]), float(sigma_next[i]), noise=z[i : i + 1]
        )
        torch.testing.assert_close(out.mean[i : i + 1], one.mean, atol=ATOL, rtol=0)
        torch.testing.assert_close(out.log_prob[i : i + 1], one.log_prob, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_maths_is_float32_whatever_the_input_dtype(dtype):
    x, v = _xv()
    out = flow_sde_step(x.to(dtype), v.to(dtype), 0.6, 0.4)
    assert {out.x_next.dtype, out.mean.dtype, out.std.dtype, out.log_prob.dtype} == {torch.float32}
    ref = flow_sde_step(x.to(dtype).float(), v.to(dtype).float(), 0.6, 0.4, x_next=out.x_next)
    torch.testing.assert_close(out.mean, ref.mean, atol=0, rtol=0)


def test_cps_with_oracle_predictions_lands_on_the_marginal():
    """With v = ε - x0 of the sample, x0_hat = x0 and eps_hat = ε, so one CPS step gives
    x' = (1-σ')x0 + σ'(cos(ηπ/2) ε + sin(ηπ/2) z): the residual x' - (1-σ')x0 is σ' times a
    standard normal (exactly, given z), i.e. mean 0 and std σ'."""
    g = torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(4096, 16, generator=g) for _ in range(3))
    sigma, sigma_next, eta = 0.8, 0.5, 0.7
    x = (1 - sigma) * x0 + sigma * eps
    out = cps_step(x, eps - x0, sigma, sigma_next, eta, noise=z)
    residual = out.x_next - (1 - sigma_next) * x0
    a = eta * math.pi / 2
    torch.testing.assert_close(
        residual, sigma_next * (math.cos(a) * eps + math.sin(a) * z), atol=1e-5, rtol=0
    )
    assert abs(residual.mean().item()) < 0.01  # 65536 draws: standard error 0.002
    assert abs(residual.std().item() - sigma_next) < 0.01


def test_large_flow_sde_step_with_oracle_overshoots_the_marginal_noise():
    """Same oracle, Flow-SDE σ 0.8 -> 0.5, η 0.7: x + (1-σ)v = ε, so the residual is
    (σ' + g²Δ/(2σ)) ε + g sqrt(-Δ) z with g² = 0.49·4 = 1.96, Δ = -0.3: coefficients 0.1325 and
    sqrt(0.588), total std sqrt(0.1325² + 0.588) = 0.7782, not σ' = 0.5."""
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(4096, 16, generator=g) for _ in range(2))
    x = 0.2 * x0 + 0.8 * eps
    out = flow_sde_step(x, eps - x0, 0.8, 0.5, 0.7, generator=g)
    residual = out.x_next - 0.5 * x0
    expected = math.sqrt(0.1325**2 + 1.96 * 0.3)
    assert abs(expected - 0.7782) < 1e-4
    assert abs(residual.std().item() - expected) < 0.01
    assert abs(residual.mean().item()) < 0.01


def test_cps_peer_parity_drops_the_variance_and_constant():
    x, v = _xv()
    x_next = x + 0.05 * v
    ref = cps_step(x, v, 0.6, 0.3, 0.7, x_next=x_next)
    out = cps_peer_parity_step(x, v, 0.6, 0.3, 0.7, x_next=x_next)
    torch.testing.assert_close(out.log_prob, -((x_next - ref.mean) ** 2).mean(1), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.mean, ref.mean, atol=0, rtol=0)


def test_registry_and_unknown_sampler():
    assert set(SAMPLERS) == {"ode", "flow_sde", "dance_sde", "cps", "cps_peer_parity"}
    assert get_sampler("cps") is sde.cps_step
    with pytest.raises(ValueError, match=r"sampler must be one of .*'flow_sde'.*got 'sdee'"):
        get_sampler("sdee")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"v": torch.zeros(4, 5)}, "x and v must share a shape"),
        ({"noise": torch.zeros(4, 5)}, "noise must have the shape of x"),
        ({"x_next": torch.zeros(3, 6)}, "x_next must have the shape of x"),
        ({"reduction": "max"}, "reduction must be one of"),
        ({"sigma_next": 0.6}, "sigma_next must satisfy"),
        ({"sigma": 1.2}, r"sigma must lie in \(0, 1\]"),
        ({"sigma": torch.tensor(1.2)}, r"sigma must lie in \(0, 1\]"),  # 0-d: the scalar test
        ({"sigma": float("nan")}, r"sigma must lie in \(0, 1\]"),
        ({"sigma_next": torch.tensor(-0.1)}, "sigma_next must satisfy"),
        ({"sigma": torch.tensor([0.6, 0.6, 1.2, 0.6])}, r"sigma must lie in \(0, 1\]"),
        ({"sigma_next": torch.tensor([0.4, 0.6, 0.4, 0.4])}, "sigma_next must satisfy"),
        ({"sigma_next": torch.tensor([0.4, -0.1, 0.4, 0.4])}, "sigma_next must satisfy"),
        ({"sigma": torch.ones(3)}, r"sigma must be a float or a tensor of shape \[4\]"),
        ({"eta": -0.1}, "eta must be a finite number >= 0"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(kwargs, match):
    x, v = _xv()
    args = {"x": x, "v": v, "sigma": 0.6, "sigma_next": 0.4, "eta": 0.7, **kwargs}
    with pytest.raises(ValueError, match=match):
        flow_sde_step(
            args.pop("x"), args.pop("v"), args.pop("sigma"), args.pop("sigma_next"), **args
        )


def test_gaussian_log_prob_rejects_bad_std_and_shapes():
    x, mean = _xv()
    with pytest.raises(ValueError, match="std must be > 0"):
        gaussian_log_prob(x, mean, 0.0)
    with pytest.raises(ValueError, match="x and mean must have the same shape"):
        gaussian_log_prob(x, mean[:2], 1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        gaussian_log_prob(x, mean, 1.0, "none")


def test_cps_rejects_eta_above_one():
    x, v = _xv()
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\] for CPS"):
        cps_step(x, v, 0.6, 0.4, 1.5)


def test_flow_sde_5d_batch_against_the_closed_form():
    """Video latents [B, C, F, H, W], one (σ, σ') per sample, σ = 1 among them: every value against
    the formulas of the module docstring written out per sample with python floats (not against
    per-sample calls of the same kernel): mean, std = g·sqrt(-Δ), x' = mean + std·z, and
    log_prob = mean_d(-z²/2) - log std - log(2π)/2."""
    x, v = _xv((3, 2, 2, 3, 3))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    sigma, sigma_next, eta = [1.0, 0.7, 0.4], [0.9, 0.5, 0.1], 0.7
    out = flow_sde_step(x, v, torch.tensor(sigma), torch.tensor(sigma_next), eta, noise=z)
    for i, (s, s_next) in enumerate(zip(sigma, sigma_next, strict=True)):
        # at σ = 1 the denominator 1 - σ is replaced by 1 - σ' (docs/algorithm.md §2)
        g = eta * math.sqrt(s / (1 - (s_next if s == 1.0 else s)))
        mean, std = _sde_expected(x[i], v[i], s, s_next, g)
        torch.testing.assert_close(out.mean[i], mean, atol=1e-5, rtol=0)
        assert out.std[i].item() == pytest.approx(std, abs=1e-6)
        torch.testing.assert_close(out.x_next[i], mean + std * z[i], atol=1e-5, rtol=0)
        log_prob = (
            (-0.5 * z[i].double() ** 2).mean().item() - math.log(std) - 0.5 * math.log(2 * math.pi)
        )
        assert out.log_prob[i].item() == pytest.approx(log_prob, abs=1e-5)


def test_cps_off_policy_log_ratio_by_hand():
    """One sample, D = 2, σ 0.6 -> 0.3, η = 0.5: s = 0.3·sin(π/4) = 0.212132 and
    sqrt(σ'² - s²) = sqrt(0.045) = 0.212132, so μ = 0.7·(x - 0.6v) + 0.212132·(x + 0.4v).
    x = (0.5, -1), x' = (0.3, -0.8); v_old = (1, 0.5) gives μ_old = (0.120919, -1.079706),
    v_new = (1.2, 0.4) gives μ_new = (0.053889, -1.046191). The constants cancel in the ratio:
    log ρ = mean_d[(x' - μ_old)² - (x' - μ_new)²] / (2s²) = (0.032070 - 0.060570
    + 0.078235 - 0.060610) / 2 / 0.09 = -0.060417, ρ = 0.941372."""
    x, x_next = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, -0.8]])
    old = cps_step(x, torch.tensor([[1.0, 0.5]]), 0.6, 0.3, 0.5, x_next=x_next)
    new = cps_step(x, torch.tensor([[1.2, 0.4]]), 0.6, 0.3, 0.5, x_next=x_next)
    torch.testing.assert_close(old.mean, torch.tensor([[0.120919, -1.079706]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(new.mean, torch.tensor([[0.053889, -1.046191]]), atol=1e-6, rtol=0)
    log_ratio = (new.log_prob - old.log_prob).item()
    assert log_ratio == pytest.approx(-0.060417, abs=2e-6)
    assert math.exp(log_ratio) == pytest.approx(0.941372, abs=2e-6)
    # the peers' CPS "log-prob" drops 1/(2s²): their log-ratio is 2s² = 0.09 times ours
    old_p, new_p = (
        cps_peer_parity_step(x, torch.tensor([v]), 0.6, 0.3, 0.5, x_next=x_next)
        for v in ([1.0, 0.5], [1.2, 0.4])
    )
    assert (new_p.log_prob - old_p.log_prob).item() == pytest.approx(-0.060417 * 0.09, abs=1e-6)


@pytest.mark.parametrize("reduction, d", [("sum", 1), ("mean", 3)])
def test_gaussian_log_prob_gradient_by_hand(reduction, d):
    """log N(x; μ, s²) = -(x-μ)²/(2s²) - log s - log(2π)/2 per dimension, so ∂/∂μ = (x-μ)/s²,
    ∂/∂x = -(x-μ)/s², ∂/∂s = (x-μ)²/s³ - 1/s, each divided by D for "mean". With x - μ = 0.2,
    s = 0.5: 0.8, -0.8 and 0.32 - 2 = -1.68 (per dimension, all D dimensions alike). The maths
    runs in float32 by design, so a float64 gradcheck's finite differences do not apply: the
    gradient is checked against this derivation instead."""
    x = torch.full((1, d), 0.3, requires_grad=True)
    mean = torch.full((1, d), 0.1, requires_grad=True)
    std = torch.tensor([0.5], requires_grad=True)
    gaussian_log_prob(x, mean, std, reduction).sum().backward()
    per_dim = 1.0 / d if reduction == "mean" else 1.0
    torch.testing.assert_close(mean.grad, torch.full((1, d), 0.8 * per_dim), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.grad, torch.full((1, d), -0.8 * per_dim), atol=1e-6, rtol=0)
    assert std.grad.item() == pytest.approx(-1.68 * d * per_dim, abs=1e-5)


def test_a_batch_mixing_deterministic_and_stochastic_steps_scores_each_sample_alike():
    """Per-sample sigmas where one sample's step has std 0 (CPS's last step): its log-prob is 0
    and the others' are the Gaussian's, equal to scoring each sample on its own."""
    x, v = _xv()
    sigma = torch.tensor([0.6, 0.3, 0.6, 0.2])
    sigma_next = torch.tensor([0.4, 0.0, 0.5, 0.1])  # sample 1: std 0
    out = cps_step(x, v, sigma, sigma_next, 0.7, generator=torch.Generator().manual_seed(0))
    assert out.std[1] == 0 and out.log_prob[1] == 0 and bool((out.std[[0, 2, 3]] > 0).all())
    for j in (0, 2, 3):
        one = cps_step(
            x[j : j + 1],
            v[j : j + 1],
            float(sigma[j]),
            float(sigma_next[j]),
            0.7,
            x_next=out.x_next[j : j + 1],
        )
        torch.testing.assert_close(out.log_prob[j : j + 1], one.log_prob, rtol=0, atol=0)
