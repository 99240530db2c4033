"""The adaptive δ (``AdaptiveDelta``): the band rule by hand, and convergence on a synthetic
Gaussian policy trained with the real Flow-DPPO loss, where the per-iteration KL between old and
new policy is exact (``‖Δμ‖² / (2 s² D)``) and what δ allows is not known in advance."""

from __future__ import annotations

import statistics

import pytest
import torch

from flowdppo.core import LossInputs, flow_dppo_loss, gaussian_kl, gaussian_log_prob
from flowdppo.core.trust_region import AdaptiveDelta


def test_the_band_rule_by_hand():
    c = AdaptiveDelta(delta=1e-5, target=1e-6)
    assert c.update(1.6e-6) == pytest.approx(5e-6)  # above 1.5·target: tighten by 2
    assert c.update(1.4e-6) == pytest.approx(5e-6)  # inside the band: unchanged
    assert c.update(0.6e-6) == pytest.approx(1e-5)  # below target/1.5: loosen by 2
    assert c.update(float("nan")) == pytest.approx(1e-5)  # a skipped iteration changes nothing
    assert c.update(2.5, target=2.0) == pytest.approx(1e-5)  # a scheduled target: in its band
    c = AdaptiveDelta(delta=1e-5, target=1e-6, min_delta=4e-6, max_delta=1.5e-5)
    assert c.update(1.0) == pytest.approx(5e-6) and c.update(1.0) == pytest.approx(4e-6)
    assert c.update(0.0) == pytest.approx(8e-6) and c.update(0.0) == pytest.approx(1.5e-5)
    with pytest.raises(ValueError, match="band"):
        AdaptiveDelta(delta=1.0, target=1.0, band=1.2, factor=2.0)
    with pytest.raises(ValueError, match="target"):
        AdaptiveDelta(delta=1.0, target=0.0)


def _train(controller: AdaptiveDelta, adapt: bool, iters: int = 30, seed: int = 0) -> list[float]:
    """A 16-D Gaussian step policy N(θ, 0.25 I), rewarded for moving along the first axis; each
    iteration: 256 samples, 8 Adam updates of the Flow-DPPO loss at the controller's δ, then the
    exact KL(π_old ‖ π_new) per dimension is measured and (``adapt``) fed to the controller."""
    g = torch.Generator().manual_seed(seed)
    d, b, s = 16, 256, 0.5
    theta = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([theta], lr=0.01)
    measured = []
    for _ in range(iters):
        mu_old = theta.detach().clone().expand(b, d)
        x = mu_old + s * torch.randn(b, d, generator=g)
        adv = (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
        lp_old = gaussian_log_prob(x, mu_old, s)
        for _ in range(8):
            mean = theta.expand(b, d)
            inp = LossInputs(gaussian_log_prob(x, mean, s), lp_old, adv, mean, mu_old, s)
            opt.zero_grad()
            flow_dppo_loss(inp, delta=controller.delta).loss.backward()
            opt.step()
        kl = float(gaussian_kl(theta.detach()[None], mu_old[:1], s))
        measured.append(kl)
        if adapt:
            controller.update(kl)
    return measured


@pytest.mark.parametrize("start", [10.0, 0.1])
def test_the_controller_brings_the_measured_kl_to_the_target(start):
    target = 2e-4
    kl = _train(AdaptiveDelta(delta=start * target, target=target), adapt=True)
    last = kl[-10:]
    assert target / 1.5 <= statistics.median(last) <= 1.5 * target
    assert all(target / 2.5 <= v <= 2.5 * target for v in last)


def test_without_adaptation_the_same_delta_misses_the_target():
    kl = _train(AdaptiveDelta(delta=10 * 2e-4, target=2e-4), adapt=False)
    assert statistics.median(kl[-10:]) > 5 * 2e-4
