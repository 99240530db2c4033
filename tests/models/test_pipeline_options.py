"""Pipeline options of the diffusers adapters, each equal to the diffusers pipeline's own output
for the same initial latents (float32, 2e-5): negative prompts (SD3 CFG, FLUX.1 true CFG),
FLUX.1's ``true_cfg_scale``, non-square sizes, SD3.5 skip-layer guidance in evaluation."""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_STEPS, PROMPTS, ode_images
from tiny_pipelines import MAX_SEQUENCE_LENGTH, RESOLUTION

from flowdppo.core.rollout import sample
from flowdppo.models.flux import pack_latents

NEGATIVES = ["a green square", "the small dog"]


def _pipeline_images(family, pipe, latents, height=RESOLUTION, width=RESOLUTION, **kwargs):
    given = pack_latents(latents) if family.name == "flux" else latents
    return pipe(
        PROMPTS,
        height=height,
        width=width,
        num_inference_steps=NUM_STEPS,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        latents=given.clone(),
        output_type="pt",
        **kwargs,
    ).images


def _guidance(family) -> dict:
    """The policy options and pipeline arguments of a guided run of ``family``: SD3 CFG 2.5;
    FLUX.1 distilled guidance 3.5 with true CFG 2.5."""
    if family.name == "sd3":
        return {"policy": {}, "scale": 2.5, "pipe": {"guidance_scale": 2.5}}
    pipe = {"guidance_scale": 3.5, "true_cfg_scale": 2.5}
    return {"policy": {"true_cfg_scale": 2.5}, "scale": 3.5, "pipe": pipe}


def test_negative_prompts_equal_the_pipelines_and_change_the_samples(family) -> None:
    g = _guidance(family)
    policy = family.policy(**g["policy"])
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    empty = ode_images(policy, latents, g["scale"])
    policy.set_negative_prompts(dict(zip(PROMPTS, NEGATIVES, strict=True)))
    cond = policy.encode_prompts(PROMPTS)
    assert cond["negative_prompt_embeds"].shape == cond["prompt_embeds"].shape
    ours = ode_images(policy, latents, g["scale"])
    assert (ours - empty).abs().max() > 1e-3  # the negative prompt changes the samples
    pipe = family.pipeline()
    theirs = _pipeline_images(family, pipe, latents, negative_prompt=NEGATIVES, **g["pipe"])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    # The default negative prompt, for prompts without their own; "" is the empty prompt.
    shared = family.policy(negative_prompt=NEGATIVES[0], **g["policy"])
    theirs = _pipeline_images(family, pipe, latents, negative_prompt=NEGATIVES[0], **g["pipe"])
    torch.testing.assert_close(ode_images(shared, latents, g["scale"]), theirs, rtol=0, atol=2e-5)
    theirs = _pipeline_images(family, pipe, latents, negative_prompt="", **g["pipe"])
    torch.testing.assert_close(empty, theirs, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="two negative prompts"):
        policy.set_negative_prompts({PROMPTS[0]: "a cat"})


def test_flux_true_cfg_off_ignores_negative_prompts(tiny_flux_path) -> None:
    from flowdppo.models.flux import FluxPolicy

    kw = {"resolution": RESOLUTION, "max_sequence_length": MAX_SEQUENCE_LENGTH}
    plain = FluxPolicy.from_pretrained(tiny_flux_path, **kw)
    negative = FluxPolicy.from_pretrained(tiny_flux_path, negative_prompt="a cat", **kw)
    assert set(negative.encode_prompts(PROMPTS)) == {"prompt_embeds", "pooled_prompt_embeds"}
    latents = plain.initial_noise(2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        ode_images(plain, latents, 3.5), ode_images(negative, latents, 3.5), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="true_cfg_scale must be >= 1"):
        FluxPolicy.from_pretrained(tiny_flux_path, true_cfg_scale=0.5, **kw)
    with pytest.raises(TypeError, match="unknown options"):
        FluxPolicy.from_pretrained(tiny_flux_path, true_cfg=2.0, **kw)


@pytest.mark.parametrize(("height", "width"), [(16, 32), (32, 16)])
def test_non_square_rollout_equals_the_pipeline(family, height, width) -> None:
    policy = family.policy(height=height, width=width)
    assert policy.latent_shape == (4, height // 2, width // 2)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(4))
    ours = ode_images(policy, latents, family.guidance_scale)
    assert ours.shape == (2, 3, height, width)
    pipe = family.pipeline()
    guidance = {"guidance_scale": family.guidance_scale}
    theirs = _pipeline_images(family, pipe, latents, height, width, **guidance)
    torch.testing.assert_close(policy.sigmas(NUM_STEPS), pipe.scheduler.sigmas.float())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_sizes_are_checked_against_vae_scale_and_patch(family) -> None:
    multiple = 4  # tiny VAE scale 2 × patch 2 (SD3) or × 2 for FLUX's packing
    with pytest.raises(
        ValueError, match=rf"width 18 \(pixels\) must be a positive multiple of {multiple}"
    ):
        family.policy(height=16, width=18)
    with pytest.raises(ValueError, match="height 0"):
        family.policy(height=0, width=16)


def test_sd3_size_is_checked_against_the_position_embedding(tiny_sd3_path) -> None:
    from flowdppo.models.sd3 import SD3Policy

    with pytest.raises(ValueError, match="pos_embed_max_size"):
        SD3Policy.from_pretrained(tiny_sd3_path, height=16, width=64, max_sequence_length=8)


@pytest.mark.parametrize(("start", "stop"), [(0.2, 0.8), (0.01, 0.2)])
def test_skip_layer_guidance_equals_the_pipeline(tiny_sd3_path, start, stop) -> None:
    from diffusers import StableDiffusion3Pipeline

    from flowdppo.models.sd3 import SD3Policy, SkipLayerGuidance

    kw = {"resolution": RESOLUTION, "max_sequence_length": MAX_SEQUENCE_LENGTH}
    policy = SD3Policy.from_pretrained(tiny_sd3_path, **kw)
    slg = SkipLayerGuidance(layers=(1,), scale=2.0, start=start, stop=stop)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(6))
    plain = ode_images(policy, latents, 2.5)
    policy.set_skip_layer_guidance(slg)
    sigmas = policy.sigmas(NUM_STEPS)
    cond = policy.encode_prompts(PROMPTS)
    field = policy.evaluation_velocity(sigmas, 2.5)
    out = sample(lambda x, s: field(x, s, cond), latents, sigmas, sampler="ode")
    ours = policy.decode(out.latents)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path)
    theirs = _pipeline_images(
        type("F", (), {"name": "sd3"}),
        pipe,
        latents,
        guidance_scale=2.5,
        skip_guidance_layers=[1],
        skip_layer_guidance_scale=2.0,
        skip_layer_guidance_start=start,
        skip_layer_guidance_stop=stop,
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    active = any(slg.applies(i, NUM_STEPS) for i in range(NUM_STEPS))
    assert active == ((start, stop) == (0.2, 0.8))  # 4 steps: the defaults skip nothing
    assert ((ours - plain).abs().max() > 1e-3) == active
    # The training rollouts never skip layers: ``velocity`` is unchanged.
    torch.testing.assert_close(ode_images(policy, latents, 2.5), plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"blocks 0\.\.1"):
        policy.set_skip_layer_guidance(SkipLayerGuidance(layers=(2,)))


def test_config_options_reach_evaluation_sampling(tiny_sd3_path, tmp_path) -> None:
    """A run's config → ``build_policy`` → evaluation samples of a .jsonl source with negative
    prompts, at a non-square size, with skip-layer guidance: the pipeline's images."""
    import json

    from diffusers import StableDiffusion3Pipeline

    from flowdppo.config.load import load_config
    from flowdppo.trainer.build import build_policy
    from flowdppo.trainer.evaluation import _sample_prompts

    source = tmp_path / "eval.jsonl"
    rows = [{"prompt": p, "negative_prompt": n} for p, n in zip(PROMPTS, NEGATIVES, strict=True)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        [
            "model.family=sd3",
            f"model.pretrained={tiny_sd3_path}",
            f"model.max_sequence_length={MAX_SEQUENCE_LENGTH}",
            "model.height=16",
            "model.width=24",
            "eval.skip_guidance_layers=[0]",
            "eval.skip_layer_guidance_scale=1.5",
            "eval.skip_layer_guidance_start=0.2",
            "eval.skip_layer_guidance_stop=0.8",
        ],
    )
    policy = build_policy(cfg, torch.device("cpu"))
    images = _sample_prompts(policy, str(source), 2, NUM_STEPS, 2.5, seed=5).images
    latents = torch.stack(
        [
            torch.randn(
                *policy.latent_shape, generator=torch.Generator().manual_seed(5 * 1_000_003 + j)
            )
            for j in range(2)
        ]
    )
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path)
    theirs = _pipeline_images(
        type("F", (), {"name": "sd3"}),
        pipe,
        latents,
        16,
        24,
        guidance_scale=2.5,
        negative_prompt=NEGATIVES,
        skip_guidance_layers=[0],
        skip_layer_guidance_scale=1.5,
        skip_layer_guidance_start=0.2,
        skip_layer_guidance_stop=0.8,
    )
    assert images.shape == (2, 3, 16, 24)
    torch.testing.assert_close(images, theirs, rtol=0, atol=2e-5)


def test_options_a_family_lacks_are_refused_when_the_model_is_built(tiny_flux_path) -> None:
    from flowdppo.config.load import load_config
    from flowdppo.trainer.build import build_policy

    for overrides, message in [
        (
            ["model.negative_prompt=blurry"],
            "model.negative_prompt: expected None for model.family 'shapes'",
        ),
        (
            ["model.family=flux", "model.negative_prompt=blurry"],
            "model.negative_prompt: expected None for model.family flux unless model.true_cfg",
        ),
        (["model.width=32"], "model.width: expected null for model.family shapes"),
        (["model.init_lora=x"], "model.init_lora: 'x' is an option of the diffusers families"),
        (
            [
                "model.family=flux",
                f"model.pretrained={tiny_flux_path}",
                "eval.skip_guidance_layers=[0]",
            ],
            "eval.skip_guidance_layers: model.family flux has no skip-layer guidance",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            build_policy(load_config(None, overrides), torch.device("cpu"))


def test_qwen_image_per_prompt_negatives_at_a_non_square_size(tiny_qwen_image_path) -> None:
    from diffusers import QwenImagePipeline

    from flowdppo.models.qwen_image import QwenImagePolicy

    kw = {"resolution": RESOLUTION, "max_sequence_length": 32, "height": 16, "width": 32}
    policy = QwenImagePolicy.from_pretrained(tiny_qwen_image_path, **kw)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(2))
    default = ode_images(policy, latents, 2.5)  # the family's negative prompt, " "
    policy.set_negative_prompts(dict(zip(PROMPTS, NEGATIVES, strict=True)))
    ours = ode_images(policy, latents, 2.5)
    assert ours.shape == (2, 3, 16, 32) and (ours - default).abs().max() > 1e-3
    pipe = QwenImagePipeline.from_pretrained(tiny_qwen_image_path)
    call = {"height": 16, "width": 32, "num_inference_steps": NUM_STEPS, "output_type": "pt"}
    call |= {"max_sequence_length": 32, "true_cfg_scale": 2.5}
    for negative, images in ((NEGATIVES, ours), (" ", default)):
        theirs = pipe(
            PROMPTS, negative_prompt=negative, latents=pack_latents(latents).clone(), **call
        ).images
        torch.testing.assert_close(images, theirs, rtol=0, atol=2e-5)


def test_flux2_klein_non_square_and_no_negative_prompts(tiny_flux2_klein_path) -> None:
    from diffusers import Flux2KleinPipeline

    from flowdppo.models.flux2_klein import Flux2KleinPolicy

    kw = {"max_sequence_length": 24, "height": 16, "width": 32}
    policy = Flux2KleinPolicy.from_pretrained(tiny_flux2_klein_path, **kw)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(2))
    ours = ode_images(policy, latents, 2.5)
    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_path)
    theirs = pipe(
        prompt=PROMPTS,
        height=16,
        width=32,
        num_inference_steps=NUM_STEPS,
        guidance_scale=2.5,
        max_sequence_length=24,
        latents=latents.clone(),
        output_type="pt",
    ).images
    assert ours.shape == (2, 3, 16, 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="has no negative prompts to set"):
        policy.set_negative_prompts({PROMPTS[0]: "a cat"})


def test_wan_per_prompt_negatives_equal_the_pipeline(tiny_wan_path) -> None:
    from diffusers import WanPipeline
    from tiny_pipelines import WAN_HEIGHT, WAN_NUM_FRAMES, WAN_WIDTH

    from flowdppo.models.wan import WanPolicy

    size = {"height": WAN_HEIGHT, "width": WAN_WIDTH}
    policy = WanPolicy.from_pretrained(
        tiny_wan_path, num_frames=WAN_NUM_FRAMES, max_sequence_length=MAX_SEQUENCE_LENGTH, **size
    )
    policy.set_negative_prompts(dict(zip(PROMPTS, NEGATIVES, strict=True)))
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    ours = ode_images(policy, latents, 2.0)
    pipe = WanPipeline.from_pretrained(tiny_wan_path)
    theirs = pipe(
        PROMPTS,
        negative_prompt=NEGATIVES,
        num_frames=WAN_NUM_FRAMES,
        num_inference_steps=NUM_STEPS,
        guidance_scale=2.0,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        latents=latents.clone(),
        output_type="pt",
        **size,
    ).frames
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_sample_negative_prompt_flag_sets_every_prompts_negative(family, monkeypatch, capsys):
    """``flowdppo sample --negative-prompt``: the same images as the policy given that negative
    for each ``--prompt``; other images than without the flag; one line when guidance is off."""
    from types import SimpleNamespace

    import flowdppo.runs
    import flowdppo.viz
    from flowdppo.cli import main
    from flowdppo.trainer.sampling import generate

    g = _guidance(family)
    cfg = SimpleNamespace(
        eval_guidance_scale=g["scale"],
        eval=SimpleNamespace(num_inference_steps=NUM_STEPS),
        model=SimpleNamespace(family=family.name),
    )
    policies: list = []

    def load(run):
        policies.append(family.policy(**g["policy"]))
        return policies[-1], cfg, None

    saved: list[torch.Tensor] = []
    monkeypatch.setattr(flowdppo.runs, "load_run_policy", load)
    monkeypatch.setattr(flowdppo.viz, "save_samples", lambda images, *a, **k: saved.append(images))
    args = ["sample", "--run", "r", "--n", "1", "--out", "s.png", "--seed", "5"]
    args += [x for p in PROMPTS for x in ("--prompt", p)]
    assert main([*args, "--negative-prompt", NEGATIVES[0]]) == 0
    assert main(args) == 0
    direct = family.policy(**g["policy"])
    direct.set_negative_prompts(dict.fromkeys(PROMPTS, NEGATIVES[0]))
    expected = generate(direct, PROMPTS, steps=NUM_STEPS, guidance_scale=g["scale"], seed=5)
    torch.testing.assert_close(saved[0], expected, rtol=0, atol=0)
    assert (saved[0] - saved[1]).abs().max() > 1e-3  # the flag changes the samples
    capsys.readouterr()
    assert main([*args, "--negative-prompt", "x", "--cfg", "1"]) == 2
    assert "needs guidance" in capsys.readouterr().err
