"""Pretraining: the learning-rate schedule, pure-function batches, and exact resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flowdppo.shapes import pretrain as pt
from flowdppo.shapes.model import ShapesFlowModel, ShapesModelConfig
from flowdppo.shapes.parser import parse_images
from flowdppo.shapes.prompts import (
    CATEGORIES,
    OPPOSITE,
    PromptSpec,
    load_split,
    sample_scenes,
    split_by_category,
)
from flowdppo.shapes.render import render, to_uint8
from flowdppo.shapes.score import score_images
from flowdppo.shapes.world import BACKGROUND, PALETTE

TINY = ShapesModelConfig(
    width=32, depth=1, heads=2, text_width=16, text_depth=1, stem_channels=8, head_channels=8
)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "pretrain_log.jsonl").open()]


def _crash_then_resume(monkeypatch, fn: str, step: int, run: Path, cfg) -> None:
    """Pretrain into ``run`` with ``pt.<fn>`` interrupted (Ctrl-C) at ``step``, then resume."""
    real = getattr(pt, fn)

    def crash(k, *args):
        if k == step:
            raise KeyboardInterrupt
        return real(k, *args)

    monkeypatch.setattr(pt, fn, crash)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(run, cfg, TINY)
    assert torch.load(run / "pretrain_state.pt", weights_only=True)["step"] == step
    monkeypatch.setattr(pt, fn, real)
    pt.pretrain(run, cfg, TINY)


def test_lr_schedule_warmup_then_cosine_to_final_fraction():
    cfg = pt.PretrainConfig(steps=1100, lr=1e-3, warmup_steps=100, final_lr_frac=0.1)
    assert pt.lr_at(0, cfg) == pytest.approx(1e-5)  # (0 + 1) / 100 of the peak
    assert pt.lr_at(99, cfg) == pytest.approx(1e-3)
    assert pt.lr_at(100, cfg) == pytest.approx(1e-3)  # cosine starts at the peak
    assert pt.lr_at(600, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way: cos = 0
    assert pt.lr_at(1100, cfg) == pytest.approx(1e-4)


def test_batch_is_a_pure_function_of_seed_and_step():
    cfg = pt.PretrainConfig(batch_size=16, seed=3)
    by_cat = split_by_category("train")
    a, b = pt.make_batch(7, cfg, by_cat), pt.make_batch(7, cfg, by_cat)
    other = pt.make_batch(8, cfg, by_cat)
    assert a[1] == b[1] and all(torch.equal(x, y) for x, y in zip(a[::2], b[::2], strict=True))
    assert not torch.equal(a[0], other[0])
    assert a[0].min() >= -1 and a[0].max() <= 1 and ((a[3] > 0) & (a[3] < 1)).all()
    test = {s.text for s in load_split("test")}
    assert not test & set(a[1])  # never a test prompt


def test_interrupted_pretraining_resumes_exactly(tmp_path, monkeypatch):
    cfg = pt.PretrainConfig(steps=4, batch_size=4, warmup_steps=1, checkpoint_every_s=0.0)
    pt.pretrain(tmp_path / "straight", cfg, TINY)

    _crash_then_resume(monkeypatch, "make_batch", 2, tmp_path / "resumed", cfg)
    assert torch.load(tmp_path / "resumed" / "pretrain_state.pt", weights_only=True)["step"] == 4

    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = (
            load_file(str(tmp_path / "straight" / name)),
            load_file(str(tmp_path / "resumed" / name)),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def test_sigma_logit_mean_shifts_the_noise_levels_only():
    by_cat = split_by_category("train")
    base = pt.make_batch(5, pt.PretrainConfig(batch_size=512), by_cat)
    high = pt.make_batch(5, pt.PretrainConfig(batch_size=512, sigma_logit_mean=0.7), by_cat)
    assert torch.equal(base[0], high[0]) and base[1] == high[1]  # same images and prompts
    # sigmoid(z + m) from the same draws z: σ = sigmoid(logit(σ_base) + m) exactly.
    expected = torch.sigmoid(torch.logit(base[3].double()) + 0.7).float()
    torch.testing.assert_close(high[3], expected, rtol=1e-5, atol=1e-6)
    assert float((high[3] > 0.85).float().mean()) > 3 * float((base[3] > 0.85).float().mean())


def test_category_weights_set_the_share_of_each_category():
    by_cat = split_by_category("train")
    text_cat = {s.text: s.category for s in load_split("train")}
    n = 4000
    cfg = pt.PretrainConfig(batch_size=n, p_uncond=0.0, category_weights={"position": 3.0})
    prompts = pt.make_batch(0, cfg, by_cat)[1]
    share = sum(text_cat[p] == "position" for p in prompts) / n
    assert share == pytest.approx(3 / 8, abs=0.03)  # 3 / (3 + 5 · 1): binomial sd 0.008
    only = pt.PretrainConfig(
        batch_size=64, p_uncond=0.0, category_weights={c: 0.0 for c in CATEGORIES[1:]}
    )
    assert {text_cat[p] for p in pt.make_batch(1, only, by_cat)[1]} == {CATEGORIES[0]}
    # Without weights the draw is the one the shipped base was trained with (uniform integers).
    uniform = pt.make_batch(0, pt.PretrainConfig(batch_size=n, p_uncond=0.0), by_cat)[1]
    shares = [sum(text_cat[p] == c for p in uniform) / n for c in CATEGORIES]
    assert max(abs(x - 1 / 6) for x in shares) < 0.03


def test_prior_batch_targets_are_means_of_fresh_renders_of_training_prompts():
    by_cat = split_by_category("train")
    one = pt.PretrainConfig(prior_batch=8, prior_scenes=1, seed=2)
    eps, prompts, target = pt.make_prior_batch(3, one, by_cat)
    assert eps.shape == target.shape == (8, 3, 32, 32) and len(prompts) == 8
    assert set(prompts) <= {s.text for s in load_split("train")}
    # One scene: the target is a render, whose pixels are palette colours or the background.
    colours = {tuple(c) for c in np.vstack([PALETTE, BACKGROUND[None]]).tolist()}
    pix = ((target + 1) / 2 * 255).round().permute(0, 2, 3, 1).reshape(-1, 3).int().tolist()
    assert {tuple(p) for p in pix} <= colours
    # Many scenes: the target approaches the renderer's mean image of the prompt (independent
    # draws of the same sampler), with the standard error of a mean of 400 scenes.
    many = pt.PretrainConfig(prior_batch=2, prior_scenes=400, seed=2)
    _, prompts, target = pt.make_prior_batch(0, many, by_cat)
    spec = next(s for s in load_split("train") if s.text == prompts[0])
    ref = render(sample_scenes([spec] * 4000, np.random.default_rng(9))) * 2 - 1
    assert (target[0] - ref.mean(0)).abs().mean() < 0.02
    assert (target[0] - ref.mean(0)).abs().mean() < 0.3 * (ref[0] - ref.mean(0)).abs().mean()
    # The prior term draws from a stream of its own: the main batch does not change with it.
    main = pt.make_batch(3, pt.PretrainConfig(seed=2), by_cat)
    with_prior = pt.make_batch(3, one, by_cat)
    assert main[1] == with_prior[1] and torch.equal(main[0], with_prior[0])


def test_prior_term_enters_the_loss_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = pt.PretrainConfig(
        steps=3, batch_size=4, warmup_steps=1, checkpoint_every_s=0.0, prior_batch=2, prior_scenes=3
    )
    pt.pretrain(tmp_path / "off", pt.PretrainConfig(steps=3, batch_size=4, warmup_steps=1), TINY)
    pt.pretrain(tmp_path / "on", cfg, TINY)
    _crash_then_resume(monkeypatch, "make_prior_batch", 1, tmp_path / "resumed", cfg)
    assert _losses(tmp_path / "on") == _losses(tmp_path / "resumed")
    # Same main batches and initialisation: the first logged loss differs by the prior term only.
    assert _losses(tmp_path / "on")[0] > _losses(tmp_path / "off")[0]


def test_continued_pretraining_starts_from_init_weights(tmp_path):
    first = pt.PretrainConfig(steps=2, batch_size=4, warmup_steps=1)
    pt.pretrain(tmp_path / "first", first, TINY)
    init = str(tmp_path / "first" / "model_ema.safetensors")
    zero_steps = pt.PretrainConfig(steps=0, batch_size=4, init=init)
    pt.pretrain(tmp_path / "cont", zero_steps, TINY)
    a, b = load_file(init), load_file(str(tmp_path / "cont" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "cont" / "config.json").read_text())
    assert meta["recipe"]["init"] == init  # the recipe records where it started

    other = ShapesModelConfig(**{**TINY.to_dict(), "width": 16})
    with pytest.raises(ValueError, match="architecture"):
        pt.pretrain(tmp_path / "bad", zero_steps, other)


def test_bad_prior_settings_are_refused(tmp_path):
    for bad in ({"prior_batch": -1}, {"prior_batch": 2, "prior_scenes": 0}):
        with pytest.raises(ValueError, match="prior_scenes >= 1"):
            pt.pretrain(tmp_path, pt.PretrainConfig(steps=1, **bad), TINY)


def test_resuming_with_another_architecture_is_refused(tmp_path):
    cfg = pt.PretrainConfig(steps=1, batch_size=2, warmup_steps=1, checkpoint_every_s=0.0)
    pt.pretrain(tmp_path, cfg, TINY)
    longer = pt.PretrainConfig(steps=2, batch_size=2, warmup_steps=1, checkpoint_every_s=0.0)
    skip = ShapesModelConfig(**{**TINY.to_dict(), "velocity_skip": True})
    with pytest.raises(ValueError, match="velocity_skip"):
        pt.pretrain(tmp_path, longer, skip)
    pt.pretrain(tmp_path, longer, TINY)  # the same architecture resumes
    assert torch.load(tmp_path / "pretrain_state.pt", weights_only=True)["step"] == 2


def test_prior_loss_against_its_closed_form_at_initialisation():
    # With the velocity skip a fresh model's v is σ·x exactly (zero head), so at σ = 1 and
    # x = ε: ||ε - (ε - mean x0)||² = ||mean x0||², whatever ε is.
    by_cat = split_by_category("train")
    model = ShapesFlowModel(ShapesModelConfig(**{**TINY.to_dict(), "velocity_skip": True}))
    eps, prompts, mean_x0 = pt.make_prior_batch(0, pt.PretrainConfig(prior_batch=4), by_cat)
    expected = mean_x0.pow(2).mean()
    torch.testing.assert_close(pt.prior_loss(model, eps, prompts, mean_x0), expected)


def test_prior_categories_restrict_the_prior_batch_only():
    by_cat = split_by_category("train")
    text_cat = {s.text: s.category for s in load_split("train")}
    cfg = pt.PretrainConfig(prior_batch=64, prior_scenes=1, prior_categories=["position"])
    assert {text_cat[p] for p in pt.make_prior_batch(0, cfg, by_cat)[1]} == {"position"}
    two = pt.PretrainConfig(prior_batch=64, prior_scenes=1, prior_categories=["counting", "colors"])
    assert {text_cat[p] for p in pt.make_prior_batch(0, two, by_cat)[1]} == {"counting", "colors"}
    # Unset: the prior batch is drawn like the main batch, as before the option existed.
    plain = pt.PretrainConfig(prior_batch=64, prior_scenes=1)
    assert len({text_cat[p] for p in pt.make_prior_batch(0, plain, by_cat)[1]}) == len(CATEGORIES)
    # The main batch does not depend on it.
    assert pt.make_batch(0, cfg, by_cat)[1] == pt.make_batch(0, plain, by_cat)[1]


def test_flow_weight_zero_trains_on_the_prior_term_alone(tmp_path, monkeypatch):
    cfg = pt.PretrainConfig(
        steps=2,
        batch_size=4,
        warmup_steps=1,
        prior_batch=2,
        prior_scenes=3,
        flow_weight=0.0,
        prior_categories=["position"],
    )

    def no_main_batch(*args):
        raise AssertionError("the main batch is drawn although flow_weight is 0")

    monkeypatch.setattr(pt, "make_batch", no_main_batch)
    pt.pretrain(tmp_path / "prior_only", cfg, TINY)
    # The logged loss of step 1 is the prior term of the initial model on step 0's prior batch.
    torch.manual_seed(cfg.seed)
    model = ShapesFlowModel(TINY)
    by_cat = split_by_category("train")
    with torch.no_grad():
        expected = pt.prior_loss(model, *pt.make_prior_batch(0, cfg, by_cat)).item()
    logged = json.loads((tmp_path / "prior_only" / "pretrain_log.jsonl").open().readline())
    assert logged["loss"] == pytest.approx(expected, rel=1e-6)
    assert logged["loss_prior"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"flow_weight": -1.0}, "--flow-weight"),
        ({"prior_weight": -1.0, "prior_batch": 2}, "--prior-weight"),
        ({"flow_weight": 0.0}, "nothing to train on"),
        ({"prior_batch": 2, "prior_categories": ["spatial"]}, "--prior-category"),
        ({"prior_batch": 2, "prior_categories": []}, "--prior-category"),
    ],
)
def test_bad_loss_weights_and_prior_categories_are_refused(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        pt.pretrain(tmp_path, pt.PretrainConfig(steps=1, **bad), TINY)
    assert not (tmp_path / "pretrain_state.pt").exists()


def test_flow_loss_against_its_closed_form_at_initialisation():
    # A fresh velocity-skip model's v is σ·x exactly, so the loss is
    # mean((σ·x_σ - (ε - x0))²) with x_σ = (1 - σ)·x0 + σ·ε, computed here by hand per sample.
    by_cat = split_by_category("train")
    model = ShapesFlowModel(ShapesModelConfig(**{**TINY.to_dict(), "velocity_skip": True}))
    x0, prompts, eps, sigma = pt.make_batch(0, pt.PretrainConfig(batch_size=5), by_cat)
    per_sample = [
        ((sg * ((1 - sg) * a + sg * e) - (e - a)) ** 2).mean()
        for a, e, sg in zip(x0, eps, sigma.tolist(), strict=True)
    ]
    expected = torch.stack(per_sample).mean()
    torch.testing.assert_close(pt.flow_loss(model, x0, prompts, eps, sigma), expected)


def test_caption_noise_renders_that_fraction_of_compositional_prompts_wrong():
    by_cat = split_by_category("train")
    specs = {s.text: s for s in load_split("train")}
    n, q = 1200, 0.3
    clean_cfg = pt.PretrainConfig(batch_size=n, p_uncond=0.0, seed=4)
    noisy_cfg = pt.PretrainConfig(batch_size=n, p_uncond=0.0, seed=4, caption_noise=q)
    clean, noisy = pt.make_batch(2, clean_cfg, by_cat), pt.make_batch(2, noisy_cfg, by_cat)
    assert noisy[1] == clean[1]  # the same prompts (captions)
    ok = score_images(to_uint8((noisy[0] + 1) / 2), [specs[p] for p in noisy[1]]).geneval
    cats = np.array([specs[p].category for p in noisy[1]])
    easy = np.isin(cats, ["single_object", "colors"])
    assert ok[easy].all()  # easy prompts are always captioned right
    # Binomial: ≈ 800 compositional prompts, sd of the wrong fraction ≈ 0.016.
    assert 1 - ok[~easy].mean() == pytest.approx(q, abs=0.06)
    # 0 is the clean recipe bit for bit (the noise draws come from a stream of their own): the
    # renders of the drawn prompts from the batch's own stream, recomputed here by hand.
    rng = np.random.default_rng([4, 2])
    drawn = pt._draw_prompts(rng, n, None, by_cat)
    assert torch.equal(clean[0], render(sample_scenes(drawn, rng)) * 2 - 1)
    assert score_images(to_uint8((clean[0] + 1) / 2), [specs[p] for p in clean[1]]).geneval.all()
    # The prior term's targets are means over miscaptioned renders too: with every caption of
    # a position prompt wrong, the mean render shows the opposite relation.
    prior = dict(prior_batch=4, prior_scenes=64, prior_categories=["position"], seed=1)
    right = pt.make_prior_batch(0, pt.PretrainConfig(**prior), by_cat)
    flipped = pt.make_prior_batch(0, pt.PretrainConfig(**prior, caption_noise=1.0), by_cat)
    assert right[1] == flipped[1]
    for text, t_right, t_flip in zip(right[1], right[2], flipped[2], strict=True):
        spec = specs[text]
        mirror = PromptSpec(spec.category, spec.groups, OPPOSITE[spec.relation])
        ref_right, ref_mirror = (
            render(sample_scenes([x] * 2000, np.random.default_rng(5))).mean(0) * 2 - 1
            for x in (spec, mirror)
        )

        def dist(a, b):
            return float((a - b).abs().mean())

        assert dist(t_flip, ref_mirror) < dist(t_flip, ref_right)
        assert dist(t_right, ref_right) < dist(t_right, ref_mirror)


def test_unmentioned_caption_noise_adds_an_object_to_that_fraction():
    by_cat = split_by_category("train")
    specs = {s.text: s for s in load_split("train")}
    n, q = 1200, 0.3
    cfg = pt.PretrainConfig(
        batch_size=n, p_uncond=0.0, seed=4, caption_noise=q, caption_noise_kind="unmentioned"
    )
    x0, prompts, _, _ = pt.make_batch(2, cfg, by_cat)
    parsed = parse_images(to_uint8((x0 + 1) / 2))
    named = np.array([sum(g.count for g in specs[p].groups) for p in prompts])
    extra = np.array([len(p.objects) for p in parsed]) - named
    cats = np.array([specs[p].category for p in prompts])
    easy = np.isin(cats, ["single_object", "colors"])
    assert set(extra[easy]) == {0} and set(extra[~easy]) == {0, 1}
    assert extra[~easy].mean() == pytest.approx(q, abs=0.06)  # binomial sd ≈ 0.016


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_bad_caption_noise_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="--caption-noise"):
        pt.pretrain(tmp_path, pt.PretrainConfig(steps=1, caption_noise=bad), TINY)
    with pytest.raises(ValueError, match="--caption-noise-kind"):
        pt.pretrain(tmp_path, pt.PretrainConfig(steps=1, caption_noise_kind="swap"), TINY)
