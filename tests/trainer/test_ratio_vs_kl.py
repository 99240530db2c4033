"""benchmarks/shapes_ratio_vs_kl.py: its per-pair log ρ and KL, and which pairs a trust region hits."""

from __future__ import annotations

import math

import numpy as np
import torch
from benchmark_modules import load_benchmark

from flowdppo.core import LossInputs, get_sampler, ratio_clip_loss
from flowdppo.trainer.trainer import Trainer

from .tiny import tiny_config

bench = load_benchmark("shapes_ratio_vs_kl")


def test_pair_stats_on_policy_then_the_closed_form_after_an_update(tiny_ckpt, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_ckpt, "optim.updates_per_iter=1"), tmp_path / "run")
    exp = trainer.rollout(0)
    trainer.advantages(exp)
    before = bench.pair_stats(trainer, exp)
    assert np.abs(before["kl"]).max() <= 1e-12 and np.abs(before["log_rho"]).max() <= 1e-6
    n, k = exp.std.shape
    assert before["step"].tolist() == [int(s) for s in exp.step_index for _ in range(n)]

    trainer.update(exp, 0)
    after = bench.pair_stats(trainer, exp)
    assert after["kl"].min() > 0
    # log ρ = z·Δμ/(s·D) - KL per pair, z = (x' - μ_old)/s, from the stored tensors and the new
    # means recomputed independently here (float64)
    cond = trainer.policy.encode_prompts(exp.prompts)
    d = math.prod(exp.x.shape[2:])
    for j in range(k):
        with torch.no_grad():
            v = trainer.policy.velocity(
                exp.x[:, j], exp.sigma[j].expand(n), cond, trainer.cfg.sampling.guidance_scale
            )
        new = get_sampler(trainer.cfg.sampling.sampler)(
            exp.x[:, j],
            v,
            exp.sigma[j],
            exp.sigma_next[j],
            trainer.cfg.sampling.eta,
            x_next=exp.x_next[:, j],
        )
        s = exp.std[:, j].double()
        dmu = (new.mean - exp.mean[:, j]).double().flatten(1)
        z = (exp.x_next[:, j] - exp.mean[:, j]).double().flatten(1) / s[:, None]
        kl = (dmu**2).sum(1) / (2 * s**2 * d)
        log_rho = (z * dmu).sum(1) / (s * d) - kl
        sel = slice(j * n, (j + 1) * n)
        np.testing.assert_allclose(after["kl"][sel], kl.numpy(), rtol=1e-4)
        np.testing.assert_allclose(after["log_rho"][sel], log_rho.numpy(), atol=2e-6)


def test_summary_counts_the_pairs_each_trust_region_acts_on() -> None:
    # pair:      A>0 ρ up big, A>0 ρ up small, A<0 ρ down big, A<0 ρ up, A>0 ρ down
    s = {
        "kl": np.array([2e-5, 2e-5, 1e-6, 3e-5, 3e-5]),
        "log_rho": np.log1p(np.array([2e-4, 5e-5, -3e-4, 2e-4, -2e-4])),
        "adv": np.array([1.0, 1.0, -1.0, -1.0, 1.0]),
        "step": np.zeros(5, dtype=int),
    }
    r = bench.summarise(s, d=10)
    assert r["clip_frac"] == 2 / 5  # pairs 0 and 2: |ρ - 1| > 1e-4 in the advantage's direction
    assert r["mask_frac"] == 2 / 5  # pairs 0 and 1: KL ≥ 1e-5 and ρ moved with the advantage
    assert r["below_one"] == 2 / 5
    assert math.isclose(r["kl"], s["kl"].mean())
    assert math.isclose(r["predicted_std"], float(np.sqrt(2 * s["kl"] / 10).mean()))


def test_clip_acts_is_where_the_ratio_clip_loss_zeroes_the_gradient() -> None:
    """The benchmark's count of clipped pairs against the loss itself: per term, the gradient of
    core.ratio_clip_loss is exactly 0 on the pairs clip_acts names and nonzero elsewhere."""
    log_rho = np.log1p(np.array([2e-4, 5e-5, -3e-4, 2e-4, -2e-4, -5e-5, 3e-4, -3e-4]))
    adv = np.array([1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 0.5, 0.5])
    old = torch.zeros(len(adv), dtype=torch.float64)
    lp = torch.tensor(log_rho).requires_grad_(True)
    mean = torch.zeros(len(adv), 2, dtype=torch.float64)
    inp = LossInputs(lp, old, torch.tensor(adv), mean, mean, 1.0)
    ratio_clip_loss(inp, clip_range=bench.EPS_CLIP).loss.backward()
    assert lp.grad is not None
    acts = bench.clip_acts(log_rho, adv)
    assert acts.tolist() == [True, False, True, False, False, False, True, False]
    assert ((lp.grad == 0).numpy() == acts).all()
