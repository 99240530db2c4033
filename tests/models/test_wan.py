"""WanPolicy on a tiny random WanPipeline: 5-D latents, equivalence with ``WanPipeline.__call__``
(the negative prompt included), the scheduler's sigmas, checks of frames and sizes, the
reference model, LoRA export into ``load_lora_weights``."""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_STEPS, PROMPTS, ode_images, perturb_lora
from tiny_pipelines import MAX_SEQUENCE_LENGTH, WAN_HEIGHT, WAN_NUM_FRAMES, WAN_WIDTH

from flowdppo.models.base import Policy

SIZE = (WAN_HEIGHT, WAN_WIDTH)


def _policy(source, **kwargs):
    from flowdppo.models.wan import WanPolicy

    options = {
        "device": "cpu",
        "resolution": SIZE,
        "num_frames": WAN_NUM_FRAMES,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "lora_rank": 4,
        "lora_alpha": 8,
        **kwargs,
    }
    return WanPolicy.from_pretrained(source, **options)


def _pipeline_frames(pipe, latents, guidance_scale, negative_prompt=None):
    """``WanPipeline``'s own frames [B, F, 3, H, W] for these initial latents."""
    return pipe(
        PROMPTS,
        negative_prompt=negative_prompt,
        height=WAN_HEIGHT,
        width=WAN_WIDTH,
        num_frames=WAN_NUM_FRAMES,
        num_inference_steps=NUM_STEPS,
        guidance_scale=guidance_scale,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        latents=latents.clone(),
        output_type="pt",
    ).frames


def test_protocol_shapes_and_dtypes(tiny_wan_path) -> None:
    policy = _policy(tiny_wan_path)
    assert isinstance(policy, Policy)
    # 4 channels, (5 - 1)/4 + 1 = 2 latent frames, 16/8 × 32/8 latent pixels.
    assert policy.latent_shape == (4, 2, 2, 4)
    cond = policy.encode_prompts(PROMPTS)
    assert set(cond) == {"prompt_embeds"}
    assert cond["prompt_embeds"].shape == (2, MAX_SEQUENCE_LENGTH, 32)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 4, 2, 2, 4) and x.dtype == torch.float32
    v = policy.velocity(x, torch.full((2,), 0.5), cond, 2.0)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    frames = policy.decode(x)
    assert frames.shape == (2, WAN_NUM_FRAMES, 3, WAN_HEIGHT, WAN_WIDTH)
    assert frames.dtype == torch.float32 and frames.min() >= 0 and frames.max() <= 1
    with pytest.raises(ValueError, match="latents have shape"):
        policy.velocity(x[:, :, :1], torch.full((2,), 0.5), cond)


@pytest.mark.parametrize(
    ("guidance", "negative", "expand"),
    [(1.0, None, False), (2.0, None, False), (2.0, "blurry static", False), (2.0, "blurry", True)],
    ids=["no_cfg", "cfg_empty_negative", "cfg_negative_prompt", "wan22_expand_timesteps"],
)
def test_ode_frames_equal_the_wan_pipeline(guidance, negative, expand, tmp_path) -> None:
    """Same initial latents, same steps: our rollout loop + velocity == WanPipeline.__call__,
    and ``sigmas`` are the pipeline scheduler's own (shift 3)."""
    from diffusers import WanPipeline
    from tiny_pipelines import make_tiny_wan

    folder = tmp_path / "wan"
    make_tiny_wan(tmp_path / "parts", expand_timesteps=expand).save_pretrained(folder)
    policy = _policy(folder, negative_prompt=negative)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    ours = ode_images(policy, latents, guidance)
    pipe = WanPipeline.from_pretrained(folder)
    theirs = _pipeline_frames(pipe, latents, guidance, negative)
    torch.testing.assert_close(policy.sigmas(NUM_STEPS), pipe.scheduler.sigmas.float())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_negative_prompt_changes_guided_velocity_only(tiny_wan_path) -> None:
    empty = _policy(tiny_wan_path)
    negative = _policy(tiny_wan_path, negative_prompt="blurry static")
    cond = empty.encode_prompts(PROMPTS)
    x = empty.initial_noise(2, torch.Generator().manual_seed(1))
    sigma = torch.full((2,), 0.7)
    assert (
        empty.velocity(x, sigma, cond, 3.0) - negative.velocity(x, sigma, cond, 3.0)
    ).abs().max() > 1e-4
    torch.testing.assert_close(
        empty.velocity(x, sigma, cond, 1.0), negative.velocity(x, sigma, cond, 1.0), rtol=0, atol=0
    )
    # CFG by hand: v_neg + g (v_cond - v_neg), the negative prompt's conditioning as the
    # unconditional branch.
    v_cond = negative.velocity(x, sigma, cond, 1.0)
    neg = negative.encode_prompts(["blurry static", "blurry static"])
    v_neg = negative.velocity(x, sigma, neg, 1.0)
    torch.testing.assert_close(
        negative.velocity(x, sigma, cond, 3.0), v_neg + 3.0 * (v_cond - v_neg), rtol=1e-5, atol=1e-6
    )


def test_sigmas_are_the_hub_checkpoints_unipc_schedule(tiny_wan_path) -> None:
    """Wan's hub checkpoints ship UniPC with flow sigmas and flow_shift 3: the policy's sigmas
    are that scheduler's own, ``3s / (1 + 2s)`` of the first T of ``s = linspace(1, 1/1000,
    T + 1)`` (the first lowered by 1e-6, UniPC's guard against log 0), then 0."""
    import numpy as np
    from diffusers import UniPCMultistepScheduler, WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_wan_path)
    pipe.scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    policy = _policy(pipe)
    steps = 10
    s = np.linspace(1.0, 1.0 / 1000, steps + 1)[:-1]
    shifted = 3 * s / (1 + 2 * s)
    shifted[0] -= 1e-6
    expected = torch.tensor([*shifted, 0.0], dtype=torch.float32)
    torch.testing.assert_close(policy.sigmas(steps), expected, rtol=0, atol=1e-6)
    pipe.scheduler.set_timesteps(steps)
    torch.testing.assert_close(policy.sigmas(steps), pipe.scheduler.sigmas.float())


def test_frames_and_sizes_are_checked(tiny_wan_path) -> None:
    with pytest.raises(ValueError, match=r"num_frames 6 must be 4k \+ 1.*e\.g\. 5 or 9"):
        _policy(tiny_wan_path, num_frames=6)
    with pytest.raises(ValueError, match=r"height 24 must be a positive multiple of 16"):
        _policy(tiny_wan_path, resolution=(24, 32))
    with pytest.raises(ValueError, match=r"width 40 must be a positive multiple of 16"):
        _policy(tiny_wan_path, resolution=(16, 40))
    square = _policy(tiny_wan_path, resolution=32, num_frames=1)
    assert square.latent_shape == (4, 1, 4, 4)
    assert _policy(tiny_wan_path, resolution=None, num_frames=None).latent_shape == (4, 21, 60, 104)


def test_two_expert_wan22_pipeline_is_refused(tiny_wan_path) -> None:
    import copy

    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_wan_path)
    pipe.register_modules(transformer_2=copy.deepcopy(pipe.transformer))
    with pytest.raises(ValueError, match="transformer_2"):
        _policy(pipe)


def test_lora_targets_and_reference(tiny_wan_path) -> None:
    from flowdppo.models.wan import WanPolicy

    policy = _policy(tiny_wan_path)
    names = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    layers = {n.split(".lora_")[0].split(".", 2)[2] for n in names}  # e.g. attn1.to_q
    assert layers == {f"attn{i}.{t}" for i in (1, 2) for t in WanPolicy.default_lora_targets}
    cond = policy.encode_prompts(PROMPTS)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.8)
    base = policy.velocity(x, sigma, cond, 2.0)
    perturb_lora(policy)
    trained = policy.velocity(x, sigma, cond, 2.0)
    assert (trained - base).abs().max() > 1e-3
    with policy.reference():
        torch.testing.assert_close(policy.velocity(x, sigma, cond, 2.0), base)


def test_exported_lora_loads_into_wan_pipeline_with_the_same_frames(
    tiny_wan_path, tmp_path
) -> None:
    from diffusers import WanPipeline

    from flowdppo.models.export import export_lora

    policy = _policy(tiny_wan_path, negative_prompt="blurry")
    perturb_lora(policy)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(5))
    ours = ode_images(policy, latents, 2.0)
    out = export_lora(policy, tmp_path / "lora")
    pipe = WanPipeline.from_pretrained(tiny_wan_path)
    base = _pipeline_frames(pipe, latents, 2.0, "blurry")
    assert (base - ours).abs().max() > 1e-3  # the LoRA really changes the frames
    pipe.load_lora_weights(out)
    theirs = _pipeline_frames(pipe, latents, 2.0, "blurry")
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)
