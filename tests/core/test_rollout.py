"""The rollout loop: on-policy invariant, ODE = hand Euler loop, video rank, Gaussian-data answers.

Known answer for Gaussian data. Let x0 ~ N(m, c² I), ε ~ N(0, I) independent and
x_σ = (1-σ) x0 + σ ε. Per dimension (x_σ, ε, x0) are jointly Gaussian with
Var x_σ = (1-σ)² c² + σ² =: V, Cov(ε, x_σ) = σ, Cov(x0, x_σ) = (1-σ) c². Hence
E[ε | x_σ = x] = σ (x - (1-σ) m) / V and E[x0 | x_σ = x] = m + (1-σ) c² (x - (1-σ) m) / V, so the
exact velocity is v(x, σ) = E[ε - x0 | x] = (σ - (1-σ) c²) (x - (1-σ) m) / V - m (at σ = 1:
v = x - m). Samplers started from N(0, I) at σ = 1 with this v should end at N(m, c² I).
"""

from __future__ import annotations

import math

import pytest
import torch

from flowdppo.core import LossInputs, flow_dppo_loss, recompute_step, sample, shifted_sigmas

M, C = 0.5, 0.3


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))  # [B] -> [B, 1, ...]
    a = 1.0 - s
    var = a * a * C * C + s * s
    return (s - a * C * C) * (x - a * M) / var - M


def _final_stats(sampler: str, steps: int, shift: float) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 4, generator=g)  # 32768 scalars: std of the std estimate ~0.4 %
    train = range(steps) if sampler != "ode" else ()
    out = sample(
        gaussian_velocity,
        x,
        shifted_sigmas(steps, shift),
        sampler=sampler,
        train_steps=train,
        generator=g,
    )
    return out.latents.mean().item(), out.latents.std().item()


@pytest.mark.parametrize("sampler", ["ode", "flow_sde", "dance_sde"])
def test_samplers_converge_to_the_gaussian_data_as_steps_grow(sampler):
    """T = 200 (linear schedule): mean within 0.01, std within 2 % of c (measured: ODE -0.8 %,
    Flow-SDE +0.5 %, Dance-SDE +0.7 %)."""
    mean, std = _final_stats(sampler, 200, 1.0)
    assert abs(mean - M) < 0.01
    assert abs(std / C - 1) < 0.02


@pytest.mark.parametrize("sampler", ["ode", "flow_sde"])
def test_ten_steps_are_visibly_off_and_the_error_shrinks_with_steps(sampler):
    """Reference T = 10, shift 3: std off by >10 % (measured ODE -38 %, Flow-SDE -15 %), then
    decreasing through T = 50 to T = 200."""
    errors = [abs(_final_stats(sampler, t, 3.0)[1] / C - 1) for t in (10, 50, 200)]
    assert errors[0] > 0.10
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.025


def test_cps_does_not_converge_to_the_data_distribution():
    """docs/algorithm.md §2: CPS noise does not shrink with the step; at T = 200 std is still ~16 % low."""
    _, std = _final_stats("cps", 200, 1.0)
    assert std / C - 1 < -0.10


class _TinyVelocity(torch.nn.Module):
    """A small trainable velocity: v = W x (flattened) + b·σ."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim)
        self.b = torch.nn.Parameter(torch.linspace(-1, 1, dim))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)  # [B, ...] -> [B, D]
        return (self.lin(flat) + self.b * sigma[:, None]).reshape(x.shape)


@pytest.mark.parametrize("sampler", ["flow_sde", "dance_sde", "cps"])
def test_on_policy_invariant_recompute_reproduces_stored_step(sampler):
    """Same parameters: recomputed mean and log-prob equal the stored ones, KL 0, ρ 1."""
    torch.manual_seed(0)
    model = _TinyVelocity(2 * 3 * 3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 3, 3, generator=g)
    out = sample(model, x, shifted_sigmas(10), sampler=sampler, train_steps=[1, 3, 4], generator=g)
    for k in range(3):
        r = recompute_step(
            model,
            out.x[:, k],
            out.x_next[:, k],
            out.sigma[k],
            out.sigma_next[k],
            sampler=sampler,
            eta=0.7,
        )
        torch.testing.assert_close(r.mean, out.mean[:, k], atol=0, rtol=0)
        torch.testing.assert_close(r.log_prob, out.log_prob[:, k], atol=0, rtol=0)
        assert r.log_prob.requires_grad  # recompute carries the gradient
        inp = LossInputs(
            r.log_prob, out.log_prob[:, k], torch.ones(5), r.mean, out.mean[:, k], r.std
        )
        metrics = flow_dppo_loss(inp, delta=1e-5).metrics
        assert (
            metrics["kl/old_new_max"] == 0.0 and metrics["ratio/min"] == metrics["ratio/max"] == 1.0
        )


def test_recompute_of_shuffled_pairs_from_different_steps():
    """Mini-batches mix (sample, step) pairs: per-pair sigmas [B] give the stored values."""
    torch.manual_seed(0)
    model = _TinyVelocity(6)
    g = torch.Generator().manual_seed(2)
    out = sample(
        model, torch.randn(4, 6, generator=g), shifted_sigmas(10), train_steps=[0, 2], generator=g
    )
    b_idx, k_idx = torch.tensor([3, 0, 1, 2, 0]), torch.tensor([1, 0, 1, 0, 1])
    r = recompute_step(
        model,
        out.x[b_idx, k_idx],
        out.x_next[b_idx, k_idx],
        out.sigma[k_idx],
        out.sigma_next[k_idx],
        sampler="flow_sde",
        eta=0.7,
    )
    torch.testing.assert_close(r.mean, out.mean[b_idx, k_idx], atol=1e-6, rtol=0)
    torch.testing.assert_close(r.log_prob, out.log_prob[b_idx, k_idx], atol=1e-5, rtol=0)


def test_ode_rollout_equals_a_hand_euler_loop():
    torch.manual_seed(0)
    model = _TinyVelocity(4)
    x = torch.randn(3, 4)
    sigmas = shifted_sigmas(7, 3.0)
    expected = x.clone()
    with torch.no_grad():
        for i in range(7):
            expected = expected + model(expected, sigmas[i].expand(3)) * (sigmas[i + 1] - sigmas[i])
    out = sample(model, x, sigmas, sampler="ode")
    torch.testing.assert_close(out.latents, expected, atol=1e-6, rtol=0)
    assert out.x.shape == (3, 0, 4) and out.log_prob.shape == (3, 0) and out.step_index.numel() == 0


def test_video_rank_latents_and_stored_shapes():
    """5-D latents [B, C, F, H, W]; trained-step tensors are [B, K, C, F, H, W]; no gradient."""
    torch.manual_seed(0)
    model = _TinyVelocity(2 * 2 * 3 * 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 2, 3, 3, generator=g)
    out = sample(model, x, shifted_sigmas(6), sampler="cps", train_steps=[2, 0], generator=g)
    assert out.x.shape == out.x_next.shape == out.mean.shape == (2, 2, 2, 2, 3, 3)
    assert out.std.shape == out.log_prob.shape == (2, 2) and out.latents.shape == x.shape
    assert out.step_index.tolist() == [0, 2]
    torch.testing.assert_close(out.sigma, shifted_sigmas(6)[[0, 2]])
    torch.testing.assert_close(out.sigma_next, shifted_sigmas(6)[[1, 3]])
    torch.testing.assert_close(
        out.std[:, 1], out.sigma_next[1] * math.sin(0.7 * math.pi / 2) * torch.ones(2)
    )
    assert not any(t.requires_grad for t in (out.latents, out.mean, out.log_prob))


def test_stored_x_is_the_state_entering_the_step():
    torch.manual_seed(0)
    model = _TinyVelocity(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g)
    out = sample(model, x, shifted_sigmas(5), train_steps=[0, 1], generator=g)
    torch.testing.assert_close(out.x[:, 0], x, atol=0, rtol=0)
    torch.testing.assert_close(out.x[:, 1], out.x_next[:, 0], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_steps": [10]}, r"train_steps must be distinct step indices in \[0, 10\)"),
        ({"train_steps": [1, 1]}, "train_steps must be distinct"),
        ({"sampler": "ode", "train_steps": [0]}, "sampler 'ode' has no log-prob"),
        ({"sampler": "euler"}, "sampler must be one of"),
        ({"reduction": "none"}, "reduction must be one of"),
    ],
)
def test_bad_rollout_arguments(kwargs, match):
    args = {"train_steps": [0], **kwargs}
    with pytest.raises(ValueError, match=match):
        sample(gaussian_velocity, torch.zeros(2, 3), shifted_sigmas(10), **args)


def test_given_noise_is_used_per_sample_and_checked():
    """Pre-drawn noise [B, K, ...]: a sample's trajectory does not depend on its batch."""

    def vel(x, s):
        return -x * (1 + s[:, None])  # any smooth velocity, per-sample sigma

    sig = shifted_sigmas(6, 3.0)
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(3, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    whole = sample(vel, x0, sig, sampler="flow_sde", train_steps=(0, 2), noise=z)
    part = sample(vel, x0[1:2], sig, sampler="flow_sde", train_steps=(0, 2), noise=z[1:2])
    torch.testing.assert_close(part.latents, whole.latents[1:2], rtol=0, atol=1e-6)
    # The first trained step is x_1 = mean + std * z exactly.
    torch.testing.assert_close(
        whole.x_next[:, 0], whole.mean[:, 0] + whole.std[:, 0, None] * z[:, 0]
    )
    with pytest.raises(ValueError, match=r"noise must have shape \[3, 2, 4\]"):
        sample(vel, x0, sig, sampler="flow_sde", train_steps=(0, 2), noise=z[:, :1])


def test_untrained_velocity_runs_the_untrained_steps_only():
    """A second velocity on the untrained steps: the ODE steps use it, the trained step keeps
    ``velocity_fn`` (its stored mean and log-prob are what ``recompute_step`` gives)."""
    torch.manual_seed(0)
    model = _TinyVelocity(4)
    shifted = lambda x, s: model(x, s) + 0.25  # noqa: E731  (a stand-in for a lower precision)
    x, sigmas = torch.randn(3, 4), shifted_sigmas(5, 1.0)
    noise = torch.randn(3, 1, 4)
    out = sample(model, x, sigmas, train_steps=[2], noise=noise, untrained_velocity_fn=shifted)
    # By hand: Euler with the shifted velocity on steps 0, 1, 3, 4; the stored x_{3} on step 2.
    expected = x.clone()
    with torch.no_grad():
        for i in range(2):
            expected = expected + shifted(expected, sigmas[i].expand(3)) * (
                sigmas[i + 1] - sigmas[i]
            )
    torch.testing.assert_close(out.x[:, 0], expected, atol=1e-6, rtol=0)
    ref = recompute_step(
        model,
        out.x[:, 0],
        out.x_next[:, 0],
        out.sigma[0],
        out.sigma_next[0],
        sampler="flow_sde",
        eta=0.7,
    )
    torch.testing.assert_close(ref.mean, out.mean[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(ref.log_prob, out.log_prob[:, 0], atol=0, rtol=0)
    expected = out.x_next[:, 0]
    with torch.no_grad():
        for i in range(3, 5):
            expected = expected + shifted(expected, sigmas[i].expand(3)) * (
                sigmas[i + 1] - sigmas[i]
            )
    torch.testing.assert_close(out.latents, expected, atol=1e-6, rtol=0)
    plain = sample(model, x, sigmas, train_steps=[2], noise=noise)
    assert not torch.allclose(plain.latents, out.latents)  # the second velocity did act
