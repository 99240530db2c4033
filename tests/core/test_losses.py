"""Losses of flowdppo.core.losses: the DPPO truth table, PPO clipping, GRPO-Guard by hand."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from flowdppo.core.divergence import gaussian_kl
from flowdppo.core.losses import (
    LOSSES,
    LossInputs,
    clip_advantages,
    compute_loss,
    flow_dppo_loss,
    grpo_guard_loss,
    ratio_clip_loss,
    reference_kl,
)

DELTA = 1e-5
# With std 1 and 2 latent dims, reduction "mean": KL = mean(Δμ²)/2.
HIGH_DIFF, LOW_DIFF = 0.01, 0.001  # KL = 5e-5 >= δ, resp. 5e-7 < δ


def _inputs(log_ratio, adv, diff, std=1.0, mean_ref=None, step_size=None):
    """Terms with log π_θ - log π_old = log_ratio and μ_θ - μ_old = diff in each of 2 dims."""
    n = len(log_ratio)
    log_prob_old = torch.linspace(-1.0, 1.0, n)
    log_prob = (log_prob_old + torch.tensor(log_ratio, dtype=torch.float32)).requires_grad_(True)
    mean_old = torch.linspace(0.0, 1.0, 2 * n).reshape(n, 2)
    mean = (mean_old + torch.tensor(diff, dtype=torch.float32)[:, None]).requires_grad_(True)
    return LossInputs(
        log_prob=log_prob,
        log_prob_old=log_prob_old,
        advantages=torch.tensor(adv, dtype=torch.float32),
        mean=mean,
        mean_old=mean_old,
        std=torch.full((n,), std) if isinstance(std, float) else std,
        mean_ref=mean_ref,
        step_size=step_size,
    )


TRUTH_TABLE = list(itertools.product([2.0, -1.5], [0.1, -0.1], [HIGH_DIFF, LOW_DIFF]))


def test_dppo_mask_truth_table_loss_and_gradients():
    """Drop exactly (D >= δ, ρ > 1, A > 0) and (D >= δ, ρ < 1, A < 0); the other 6 terms pass.
    L = (1/8) Σ_kept -A ρ (dropped terms stay in the denominator 8); dL/dlogp = -A ρ / 8 on
    kept terms and exactly 0 on dropped ones; no gradient reaches the means."""
    adv, log_ratio, diff = (list(col) for col in zip(*TRUTH_TABLE, strict=True))
    inp = _inputs(log_ratio, adv, diff)
    out = flow_dppo_loss(inp, delta=DELTA)
    expected_drop = [
        d == HIGH_DIFF and ((r > 0 and a > 0) or (r < 0 and a < 0)) for a, r, d in TRUTH_TABLE
    ]
    assert sum(expected_drop) == 2
    kept = [
        -a * math.exp(r) * (not drop)
        for (a, r, _), drop in zip(TRUTH_TABLE, expected_drop, strict=True)
    ]
    assert out.loss.item() == pytest.approx(sum(kept) / 8, abs=1e-6)
    out.loss.backward()
    assert inp.log_prob.grad is not None
    torch.testing.assert_close(inp.log_prob.grad, torch.tensor(kept) / 8, atol=1e-7, rtol=0)
    assert all(inp.log_prob.grad[i].item() == 0.0 for i, drop in enumerate(expected_drop) if drop)
    assert inp.mean.grad is None or torch.equal(inp.mean.grad, torch.zeros_like(inp.mean))
    assert out.metrics["mask/frac"] == pytest.approx(2 / 8)
    assert out.metrics["mask/frac_pos_adv"] == pytest.approx(1 / 8)
    assert out.metrics["mask/frac_neg_adv"] == pytest.approx(1 / 8)


def test_symmetric_mask_drops_every_term_past_delta_whichever_way_it_moved():
    """The ablation ``mask="symmetric"``: the 4 terms of the truth table with D >= δ are dropped
    (not only the 2 that moved in their advantage's direction); the others pass as before."""
    adv, log_ratio, diff = (list(col) for col in zip(*TRUTH_TABLE, strict=True))
    inp = _inputs(log_ratio, adv, diff)
    out = flow_dppo_loss(inp, delta=DELTA, mask="symmetric")
    drop = [d == HIGH_DIFF for _, _, d in TRUTH_TABLE]
    kept = [-a * math.exp(r) * (not x) for (a, r, _), x in zip(TRUTH_TABLE, drop, strict=True)]
    assert out.loss.item() == pytest.approx(sum(kept) / 8, abs=1e-6)
    out.loss.backward()
    assert inp.log_prob.grad is not None
    torch.testing.assert_close(inp.log_prob.grad, torch.tensor(kept) / 8, atol=1e-7, rtol=0)
    assert out.metrics["mask/frac"] == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="mask must be 'asymmetric' or 'symmetric'"):
        flow_dppo_loss(inp, delta=DELTA, mask="both")


def test_the_config_passes_the_mask_to_the_loss():
    from flowdppo.config import load_config

    assert load_config(None, []).loss.params().mask == "asymmetric"
    assert load_config(None, ["loss.mask=symmetric"]).loss.params().mask == "symmetric"


def test_dppo_drop_is_the_mask_the_loss_applies_and_includes_the_threshold():
    """dppo_drop on its own (the benchmark's entry): the truth table, D == δ dropped, ρ == 1 and
    A == 0 never; and per term the same mask the loss zeroes (its gradient is 0 exactly there)."""
    from flowdppo.core import dppo_drop

    div = torch.tensor([DELTA, DELTA, DELTA / 2, DELTA, DELTA, DELTA])
    log_ratio = torch.tensor([0.1, -0.1, 0.1, 0.0, 0.1, -0.1])
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.0, 1.0])
    assert dppo_drop(div, log_ratio, adv, DELTA).tolist() == [True, True] + [False] * 4
    adv_t, lr_t, diff = (list(col) for col in zip(*TRUTH_TABLE, strict=True))
    inp = _inputs(lr_t, adv_t, diff)
    flow_dppo_loss(inp, delta=DELTA).loss.backward()
    kl = gaussian_kl(inp.mean.detach(), inp.mean_old, inp.std, "mean")
    drop = dppo_drop(kl, torch.tensor(lr_t), torch.tensor(adv_t), DELTA)
    assert drop.sum() == 2
    assert inp.log_prob.grad is not None
    assert ((inp.log_prob.grad == 0) == drop).all()


def test_dppo_ratio_exactly_one_and_zero_advantage_always_pass():
    inp = _inputs([0.0, 0.0, 0.3], [2.0, -2.0, 0.0], [HIGH_DIFF] * 3)
    out = flow_dppo_loss(inp, delta=DELTA)
    assert out.metrics["mask/frac"] == 0.0
    assert out.loss.item() == pytest.approx((-2.0 + 2.0 - 0.0) / 3, abs=1e-7)


def test_dppo_tv_divergence_threshold_is_in_tv_units():
    """TV of Δμ = (0.01, 0.01), s = 1: erf(0.01414/(2√2)) = 0.005642; δ between/above it."""
    inp = _inputs([0.1], [1.0], [HIGH_DIFF])
    assert flow_dppo_loss(inp, delta=0.005, divergence="tv").metrics["mask/frac"] == 1.0
    assert flow_dppo_loss(inp, delta=0.006, divergence="tv").metrics["mask/frac"] == 0.0
    tv = flow_dppo_loss(inp, delta=0.006, divergence="tv").metrics["tv/old_new_mean"]
    assert tv == pytest.approx(math.erf(0.01 * math.sqrt(2) / (2 * math.sqrt(2))), abs=1e-6)


def test_dppo_sum_reduction_scales_the_divergence_by_dimension():
    """KL_sum = 2 KL_mean for 2 dims: 5e-7 (mean) passes δ = 8e-7, 1e-6 (sum) is dropped."""
    inp = _inputs([0.1], [1.0], [LOW_DIFF])
    assert flow_dppo_loss(inp, delta=8e-7, reduction="mean").metrics["mask/frac"] == 0.0
    assert flow_dppo_loss(inp, delta=8e-7, reduction="sum").metrics["mask/frac"] == 1.0


def test_dppo_no_nan_or_inf_when_the_ratio_overflows():
    inp = _inputs([1000.0, -1000.0, 1000.0], [1.0, 1.0, -1.0], [LOW_DIFF] * 3)
    out = flow_dppo_loss(inp, delta=DELTA)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and torch.isfinite(inp.log_prob.grad).all()
    assert out.loss.item() == pytest.approx(
        (-math.exp(20) - math.exp(-20) + math.exp(20)) / 3, rel=1e-5
    )
    assert all(math.isfinite(v) for v in out.metrics.values())


def test_dppo_step_grid_with_per_sample_advantages_equals_flat_terms():
    """P = [B, K] with advantages [B] equals the same terms flattened with A repeated."""
    g = torch.Generator().manual_seed(0)
    lp_old = torch.randn(3, 2, generator=g)
    lp = lp_old + 0.05 * torch.randn(3, 2, generator=g)
    mean_old = torch.randn(3, 2, 4, generator=g)
    mean = mean_old + 0.01 * torch.randn(3, 2, 4, generator=g)
    adv = torch.tensor([1.0, -0.5, 2.0])
    grid = LossInputs(lp, lp_old, adv, mean, mean_old, torch.full((3, 2), 0.5))
    flat = LossInputs(
        lp.reshape(6),
        lp_old.reshape(6),
        adv.repeat_interleave(2),
        mean.reshape(6, 4),
        mean_old.reshape(6, 4),
        0.5,
    )
    a, b = flow_dppo_loss(grid, delta=1e-4), flow_dppo_loss(flat, delta=1e-4)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-7)
    assert a.metrics == pytest.approx(b.metrics)


def _ppo_reference(log_ratio, adv, eps):
    """Textbook PPO-clip: L = -mean min(ρ A, clip(ρ, 1-ε, 1+ε) A)."""
    terms = []
    for r, a in zip(log_ratio, adv, strict=True):
        rho = math.exp(r)
        terms.append(-min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a))
    return sum(terms) / len(terms)


def test_ratio_clip_equals_the_ppo_formula_and_zeroes_clipped_gradients():
    eps = 1e-2
    log_ratio = [0.05, -0.05, 0.005, -0.005, 0.05, -0.05]
    adv = [1.0, 1.0, 1.0, -1.0, -2.0, -2.0]
    inp = _inputs(log_ratio, adv, [LOW_DIFF] * 6)
    out = ratio_clip_loss(inp, clip_range=eps)
    assert out.loss.item() == pytest.approx(_ppo_reference(log_ratio, adv, eps), abs=1e-6)
    out.loss.backward()
    # Clipped branch active (zero gradient): ρ > 1+ε with A > 0 (term 0), ρ < 1-ε with A < 0 (5).
    grad = inp.log_prob.grad
    assert grad is not None and grad[0].item() == 0.0 and grad[5].item() == 0.0
    assert grad[1].item() == pytest.approx(-math.exp(-0.05) / 6, abs=1e-7)
    assert out.metrics["clip/frac_high"] == pytest.approx(2 / 6)
    assert out.metrics["clip/frac_low"] == pytest.approx(2 / 6)
    assert out.metrics["clip/frac"] == pytest.approx(4 / 6)


def _guard_by_hand(lr, adv, d2, s, step, eps):
    """ρ = exp((Δlogp + mean_d Δμ²/(2c²))·c); term = max(-Aρ, -A clip(ρ))/|Δ|; c = s."""
    rho = math.exp((lr + d2 / (2 * s * s)) * s)
    return max(-adv * rho, -adv * min(max(rho, 1 - eps), 1 + eps)) / step


def test_grpo_guard_against_a_hand_computation_per_term():
    """Two terms at different steps: s = (0.5, 0.2), |Δ| = (0.1, 0.05), Δμ = 0.01 per dim."""
    std, step = torch.tensor([0.5, 0.2]), torch.tensor([0.1, 0.05])
    inp = _inputs([0.02, -0.03], [1.0, -2.0], [0.01, 0.01], std=std, step_size=step)
    out = grpo_guard_loss(inp, clip_range=0.5)
    d2 = 0.01**2  # mean over dims of Δμ²
    expected = [
        _guard_by_hand(0.02, 1.0, d2, 0.5, 0.1, 0.5),
        _guard_by_hand(-0.03, -2.0, d2, 0.2, 0.05, 0.5),
    ]
    assert out.loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert out.metrics["guard/bias_mean"] == pytest.approx((d2 / 0.5 + d2 / 0.08) / 2, rel=1e-5)


def test_grpo_guard_batch_scale_uses_batch_means_and_clips():
    """scale="batch": c = mean(s) = 0.35, divisor mean|Δ| = 0.075; ε = 1e-3 clips both terms."""
    std, step = torch.tensor([0.5, 0.2]), torch.tensor([0.1, 0.05])
    inp = _inputs([0.02, -0.03], [1.0, -2.0], [0.01, 0.01], std=std, step_size=step)
    out = grpo_guard_loss(inp, clip_range=1e-3, scale="batch")
    d2, c, div = 0.01**2, 0.35, 0.075
    expected = [
        _guard_by_hand(0.02, 1.0, d2, c, div, 1e-3),
        _guard_by_hand(-0.03, -2.0, d2, c, div, 1e-3),
    ]
    assert out.loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert out.metrics["clip/frac"] == 1.0


def test_grpo_guard_scales_agree_on_one_step_and_differ_on_mixed_steps():
    """The spec's c = batch mean of s_k and divisor mean |Δ| ("batch") equal each term's own
    ("term", the default) when a mini-batch holds one step; on a mini-batch mixing steps (0.5,
    0.1) and (0.2, 0.05), "term" is the mean of the two one-step mini-batches' losses."""
    args = ([0.02, -0.03], [1.0, -2.0], [0.01, 0.01])
    one = _inputs(*args, std=torch.tensor([0.5, 0.5]), step_size=torch.tensor([0.1, 0.1]))
    by_term, by_batch = (grpo_guard_loss(one, clip_range=0.5, scale=s) for s in ("term", "batch"))
    assert by_term.loss.item() == by_batch.loss.item()
    std, step = torch.tensor([0.5, 0.2]), torch.tensor([0.1, 0.05])
    mixed = _inputs(*args, std=std, step_size=step)
    term = grpo_guard_loss(mixed, clip_range=0.5, scale="term").loss.item()
    batch = grpo_guard_loss(mixed, clip_range=0.5, scale="batch").loss.item()
    halves = [
        grpo_guard_loss(
            _inputs(*([a[i]] for a in args), std=std[i : i + 1], step_size=step[i : i + 1]),
            clip_range=0.5,
            scale="batch",
        ).loss.item()
        for i in (0, 1)
    ]
    assert term == pytest.approx(sum(halves) / 2, rel=1e-6)
    assert abs(batch - term) > 0.1 * abs(term)


def test_a_step_of_std_zero_is_refused_by_every_loss():
    inp = _inputs([0.0, 0.0], [1.0, -1.0], [0.01, 0.01], std=torch.tensor([0.5, 0.0]))
    for name, kw in (("flow_dppo", {"delta": DELTA}), ("ratio_clip", {"clip_range": 1e-4})):
        with pytest.raises(ValueError, match="std must be > 0 for a divergence"):
            LOSSES[name](inp, **kw)


def test_grpo_guard_on_policy_ratio_is_one_and_needs_step_size():
    inp = _inputs([0.0, 0.0], [1.0, -1.0], [0.0, 0.0], step_size=0.1)
    out = grpo_guard_loss(inp, clip_range=2e-6)
    assert out.metrics["ratio/min"] == out.metrics["ratio/max"] == 1.0
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)  # (-1 + 1) / 2 / 0.1
    with pytest.raises(ValueError, match=r"needs inp\.step_size"):
        grpo_guard_loss(_inputs([0.0], [1.0], [0.0]), clip_range=2e-6)
    with pytest.raises(ValueError, match="scale must be one of"):
        grpo_guard_loss(inp, clip_range=2e-6, scale="step")


def test_reference_kl_value_and_gradient():
    """Δ(μ_θ, μ_ref) = 0.1 per dim, s = 0.5: KL_mean = 0.01 / 0.5 = 0.02 per term."""
    base = _inputs([0.0, 0.0], [1.0, 1.0], [0.0, 0.0], std=0.5)
    inp = LossInputs(**{**base.__dict__, "mean_ref": base.mean.detach() - 0.1})
    kl = reference_kl(inp, "mean")
    assert kl.item() == pytest.approx(0.02, rel=1e-5)
    kl.backward()
    assert inp.mean.grad is not None
    torch.testing.assert_close(
        inp.mean.grad, torch.full((2, 2), 0.1 / 0.25 / 2 / 2), atol=1e-6, rtol=0
    )


def test_compute_loss_adds_beta_reference_kl_and_clips_advantages():
    base = _inputs([0.0, 0.0], [10.0, -1.0], [0.0, 0.0], std=0.5)
    inp = LossInputs(**{**base.__dict__, "mean_ref": base.mean.detach() - 0.1})
    out = compute_loss("flow_dppo", inp, beta=0.5, adv_clip=5.0, delta=DELTA)
    policy = (-5.0 + 1.0) / 2  # A clipped to 5, ρ = 1
    assert out.metrics["loss/policy"] == pytest.approx(policy)
    assert out.metrics["kl/ref_mean"] == pytest.approx(0.02, rel=1e-5)
    assert out.loss.item() == pytest.approx(policy + 0.5 * 0.02, rel=1e-6)
    assert out.metrics["loss/total"] == pytest.approx(out.loss.item())
    no_ref = compute_loss("ratio_clip", base, clip_range=1e-4)
    assert "kl/ref_mean" not in no_ref.metrics


def test_metric_names_are_prefix_grouped_snake_case_floats():
    inp = _inputs([0.1, -0.1], [1.0, -1.0], [HIGH_DIFF, LOW_DIFF], step_size=0.1)
    for name, hp in [
        ("flow_dppo", {"delta": DELTA}),
        ("ratio_clip", {"clip_range": 1e-4}),
        ("grpo_guard", {"clip_range": 2e-6}),
    ]:
        metrics = compute_loss(name, inp, **hp).metrics
        assert {
            "ratio/mean",
            "kl/old_new_mean",
            "kl/old_new_max",
            "loss/policy",
            "loss/total",
        } <= set(metrics)
        for key, value in metrics.items():
            assert re.fullmatch(r"[a-z_]+/[a-z_]+", key) and type(value) is float


def test_clip_advantages():
    torch.testing.assert_close(
        clip_advantages(torch.tensor([-7.0, 0.5, 9.0]), 5.0), torch.tensor([-5.0, 0.5, 5.0])
    )
    with pytest.raises(ValueError, match="max_abs must be a finite number > 0"):
        clip_advantages(torch.zeros(1), 0.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda i: flow_dppo_loss(i, delta=0.0), "delta must be a finite number > 0, got 0.0"),
        (lambda i: flow_dppo_loss(i, delta=-1e-5), "delta must be a finite number > 0"),
        (lambda i: flow_dppo_loss(i, delta=DELTA, divergence="js"), "divergence must be one of"),
        (lambda i: flow_dppo_loss(i, delta=DELTA, reduction="none"), "reduction must be one of"),
        (lambda i: ratio_clip_loss(i, clip_range=0), "clip_range must be a finite number > 0"),
        (
            lambda i: compute_loss("ppo", i),
            r"loss must be one of \['flow_dppo', 'grpo_guard', 'ratio_clip'\]",
        ),
        (
            lambda i: compute_loss("flow_dppo", i, delta=DELTA, clip_range=0.1),
            r"unknown hyper-parameter\(s\) \['clip_range'\]",
        ),
        (
            lambda i: compute_loss("flow_dppo", i, beta=-1.0, delta=DELTA),
            "beta must be a finite number >= 0",
        ),
        (
            lambda i: compute_loss("flow_dppo", i, beta=0.1, delta=DELTA),
            r"reference_kl needs inp\.mean_ref",
        ),
    ],
)
def test_bad_hyper_parameters_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(_inputs([0.1], [1.0], [LOW_DIFF]))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("log_prob_old", torch.zeros(3), r"log_prob_old must have shape \[2\]"),
        ("advantages", torch.zeros(3), "advantages must have shape"),
        ("mean", torch.zeros(2), r"mean must have shape \[2\] \+ latent dims"),
        ("mean_old", torch.zeros(2, 3), "mean_old must have the shape of mean"),
        ("std", torch.ones(3), r"std must have shape \[2\]"),
        ("step_size", torch.ones(2, 1), r"step_size must have shape \[2\]"),
    ],
)
def test_loss_inputs_reject_mismatched_shapes(field, value, match):
    base = _inputs([0.1, 0.1], [1.0, 1.0], [LOW_DIFF, LOW_DIFF]).__dict__
    with pytest.raises(ValueError, match=match):
        LossInputs(**{**base, field: value})


def test_registry_names():
    assert set(LOSSES) == {"flow_dppo", "ratio_clip", "grpo_guard"}


def test_each_loss_is_registered_with_a_parameter_dataclass_of_its_keywords():
    import dataclasses
    import inspect

    from flowdppo.core.losses import (
        DEFAULT_CLIP_RANGE,
        LOSS_PARAMS,
        FlowDPPOParams,
        GRPOGuardParams,
        RatioClipParams,
        loss_params,
    )

    assert dict(LOSS_PARAMS) == {
        "flow_dppo": FlowDPPOParams,
        "ratio_clip": RatioClipParams,
        "grpo_guard": GRPOGuardParams,
    }
    for name, cls in LOSS_PARAMS.items():  # the dataclass names the function's keywords
        kw = [p for p in inspect.signature(LOSSES[name]).parameters if p != "inp"]
        assert sorted(f.name for f in dataclasses.fields(cls)) == sorted(kw), name
    assert loss_params("ratio_clip", {}).clip_range == DEFAULT_CLIP_RANGE["ratio_clip"]
    assert loss_params("grpo_guard", {"clip_range": None}) == GRPOGuardParams(clip_range=2e-6)
    assert loss_params("flow_dppo", {"delta": 1e-6, "scale": "x"}, only_known=True) == (
        FlowDPPOParams(delta=1e-6)
    )
    with pytest.raises(ValueError, match=r"'flow_dppo' needs hyper-parameter\(s\) \['delta'\]"):
        compute_loss("flow_dppo", _inputs([0.0], [1.0], [0.0]))
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['scale'\]; valid"):
        loss_params("ratio_clip", {"scale": "term"})
