"""QwenImagePolicy on a tiny random QwenImagePipeline: equivalence with the pipeline (with and
without true CFG, the negative prompt, masked prompts of unequal length), padding that changes
nothing, the config field, LoRA export into plain diffusers and two on-policy trainer iterations."""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_STEPS, PROMPTS, Family, ode_images, perturb_lora
from tiny_pipelines import RESOLUTION

from flowdppo.models.flux import pack_latents

# Long enough that no prompt is cut: "a red circle" and "a big blue cat" keep 8 and 9 tokens
# (the chat template's 5-token tail included), so a batch of both is masked; " " keeps 6.
LONG = 32


@pytest.fixture
def qwen(tiny_qwen_image_path) -> Family:
    from diffusers import QwenImagePipeline

    from flowdppo.models.qwen_image import QwenImagePolicy

    return Family("qwen_image", QwenImagePolicy, QwenImagePipeline, tiny_qwen_image_path, 2.5)


def pipeline_images(pipe, latents, guidance_scale: float, negative_prompt: str | None = " "):
    """The pipeline's own images: true CFG when guidance_scale > 1 (with the negative prompt)."""
    cfg = {"true_cfg_scale": guidance_scale}
    if guidance_scale > 1:
        cfg["negative_prompt"] = negative_prompt
    return pipe(
        PROMPTS,
        height=RESOLUTION,
        width=RESOLUTION,
        num_inference_steps=NUM_STEPS,
        max_sequence_length=LONG,
        latents=pack_latents(latents).clone(),  # the pipeline takes packed latents
        output_type="pt",
        **cfg,
    ).images


def test_protocol_shapes_masks_and_sigmas(qwen) -> None:
    policy = qwen.policy(max_sequence_length=LONG)
    assert policy.latent_shape == (4, RESOLUTION // 2, RESOLUTION // 2)
    cond = policy.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, LONG, 16)
    assert cond["prompt_embeds_mask"].dtype == torch.bool
    assert cond["prompt_embeds_mask"].sum(dim=1).tolist() == [8, 9]
    padding = ~cond["prompt_embeds_mask"]
    assert (cond["prompt_embeds"][padding] == 0).all()
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    v = policy.velocity(x, torch.full((2,), 0.5), cond, 2.5)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    images = policy.decode(x)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and 0 <= images.min() <= images.max() <= 1
    sigmas = policy.sigmas(NUM_STEPS)
    # Qwen-Image's scheduler stretches the schedule to end at shift_terminal before the final 0.
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and sigmas[-2].item() == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("guidance_scale", "negative_prompt"),
    [(1.0, None), (2.5, " "), (2.5, "a green square")],
    ids=["no_cfg", "true_cfg", "true_cfg_negative_prompt"],
)
def test_ode_images_equal_the_pipeline(qwen, guidance_scale, negative_prompt) -> None:
    policy = qwen.policy(max_sequence_length=LONG, negative_prompt=negative_prompt)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    ours = ode_images(policy, latents, guidance_scale)
    pipe = qwen.pipeline()
    theirs = pipeline_images(pipe, latents, guidance_scale, negative_prompt)
    torch.testing.assert_close(policy.sigmas(NUM_STEPS), pipe.scheduler.sigmas.float())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_negative_prompt_and_true_cfg_change_the_velocity(qwen) -> None:
    blank = qwen.policy(max_sequence_length=LONG)
    other = qwen.policy(max_sequence_length=LONG, negative_prompt="a green square")
    cond = blank.encode_prompts(PROMPTS)
    x = blank.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.7)
    plain = blank.velocity(x, sigma, cond, 1.0)
    torch.testing.assert_close(other.velocity(x, sigma, cond, 1.0), plain, rtol=0, atol=0)
    guided = blank.velocity(x, sigma, cond, 4.0)
    assert (guided - plain).abs().max() > 1e-3
    assert (other.velocity(x, sigma, cond, 4.0) - guided).abs().max() > 1e-3
    # The rescale: each packed token of the guided velocity has the conditional one's norm.
    norms = [pack_latents(v).norm(dim=-1) for v in (guided, plain)]
    torch.testing.assert_close(norms[0], norms[1], rtol=1e-5, atol=1e-6)


def test_padding_and_batch_composition_change_nothing(qwen) -> None:
    """Every prompt is padded to max_sequence_length and masked; a batch is cut back to its
    longest prompt. Neither the padding length nor the other prompts of a batch may matter."""
    short = qwen.policy(max_sequence_length=16)
    long = qwen.policy(max_sequence_length=LONG)
    x = short.initial_noise(2, torch.Generator().manual_seed(1))
    sigma = torch.full((2,), 0.6)
    pair = long.velocity(x, sigma, long.encode_prompts(PROMPTS), 2.5)
    torch.testing.assert_close(
        short.velocity(x, sigma, short.encode_prompts(PROMPTS), 2.5), pair, rtol=0, atol=1e-6
    )
    for i, prompt in enumerate(PROMPTS):
        alone = long.velocity(x[i : i + 1], sigma[:1], long.encode_prompts([prompt]), 2.5)
        torch.testing.assert_close(alone[0], pair[i], rtol=0, atol=1e-6)


def test_bad_options_are_refused(qwen, tiny_qwen_image_path) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        qwen.policy(resolution=RESOLUTION + 2)
    with pytest.raises(ValueError, match=r"max_sequence_length must be in \[1, 1024\]"):
        qwen.policy(max_sequence_length=2048)
    with pytest.raises(TypeError, match="negative_prompt must be a string"):
        qwen.policy(negative_prompt=["a"])
    pipe = qwen.pipeline()
    pipe.transformer.register_to_config(guidance_embeds=True)
    with pytest.raises(ValueError, match="guidance_embeds=True"):
        qwen.policy(pipe)


def test_negative_prompt_config_field(tiny_qwen_image_path) -> None:
    from flowdppo.config.load import load_config
    from flowdppo.config.schema import ConfigError
    from flowdppo.trainer.build import POLICY_BUILDERS

    with pytest.raises(ConfigError, match=r"model.negative_prompt: expected None for model.family"):
        load_config(overrides=["model.family=flux2_klein", "model.negative_prompt=blurry"])
    cfg = load_config(
        overrides=[
            "model.family=qwen_image",
            f"model.pretrained={tiny_qwen_image_path}",
            f"model.resolution={RESOLUTION}",
            f"model.max_sequence_length={LONG}",
            "model.negative_prompt=blurry",
        ]
    )
    policy = POLICY_BUILDERS["qwen_image"](cfg.model, torch.device("cpu"), None)
    assert type(policy).__name__ == "QwenImagePolicy" and policy.negative_prompt == "blurry"
    assert cfg.model.lora_target_modules == list(policy.default_lora_targets)


def test_exported_lora_reproduces_the_policy_in_diffusers(qwen, tmp_path) -> None:
    from flowdppo.models.export import export_lora

    policy = qwen.policy(max_sequence_length=LONG)
    perturb_lora(policy)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(5))
    ours = ode_images(policy, latents, 2.5)
    out = export_lora(policy, tmp_path / "lora")
    pipe = qwen.pipeline()
    assert (pipeline_images(pipe, latents, 2.5) - ours).abs().max() > 1e-3
    pipe.load_lora_weights(out)
    torch.testing.assert_close(pipeline_images(pipe, latents, 2.5), ours, rtol=0, atol=2e-5)


def test_trainer_runs_two_iterations_on_policy_with_true_cfg(qwen, tmp_path) -> None:
    from test_trainer_tiny import _config, _weights

    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    cfg = _config(qwen, prompts, f"model.max_sequence_length={LONG}", "model.negative_prompt=dog")
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.policy.negative_prompt == "dog"
    before = _weights(trainer.policy)
    for _ in range(2):
        metrics = trainer.step()
        assert metrics["check/onpolicy_kl_max"] < 1e-10, metrics
        assert metrics["check/onpolicy_ratio_err_max"] < 1e-5, metrics
    after = _weights(trainer.policy)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("transformer.") and ".lora_" in n for n in changed)
    assert any(".to_add_out.lora_B." in n for n in changed)


def test_bf16_with_offloaded_encoder_keeps_float32_maths(qwen) -> None:
    policy = qwen.policy(
        max_sequence_length=LONG, dtype="bfloat16", offload_text_encoders=True, lora_rank=4
    )
    cond = policy.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].dtype == torch.bfloat16
    assert policy.pipeline.vae.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    v = policy.velocity(x, torch.full((2,), 0.5), cond, 2.5)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    v.square().mean().backward()
    # Every LoRA weight learns but the last block's to_add_out: its text output is never read.
    idle = [
        n for n, p in policy.transformer.named_parameters() if p.requires_grad and p.grad is None
    ]
    assert idle and all(n.startswith("transformer_blocks.1.attn.to_add_out.") for n in idle)
    assert policy.decode(x).dtype == torch.float32
