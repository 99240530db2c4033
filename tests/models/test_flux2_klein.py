"""Flux2KleinPolicy on a tiny random Flux2KleinPipeline: equivalence with the pipeline (with and
without CFG; the distilled variant ignoring guidance), the default LoRA targets reaching the
single-stream blocks, LoRA export into plain diffusers and two on-policy trainer iterations."""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_STEPS, PROMPTS, Family, ode_images, perturb_lora
from tiny_pipelines import RESOLUTION, make_tiny_flux2_klein

# Qwen3 chat-format tokens kept per prompt: the 8-token template head and tail and the prompt fit.
TOKENS = 24


@pytest.fixture
def klein(tiny_flux2_klein_path) -> Family:
    from diffusers import Flux2KleinPipeline

    from flowdppo.models.flux2_klein import Flux2KleinPolicy

    return Family("flux2_klein", Flux2KleinPolicy, Flux2KleinPipeline, tiny_flux2_klein_path, 2.5)


def pipeline_images(pipe, latents, guidance_scale: float):
    """The pipeline's own images; it takes the patchified, normalized latents as they are."""
    return pipe(
        prompt=PROMPTS,
        height=RESOLUTION,
        width=RESOLUTION,
        num_inference_steps=NUM_STEPS,
        guidance_scale=guidance_scale,
        max_sequence_length=TOKENS,
        latents=latents.clone(),
        output_type="pt",
    ).images


def test_protocol_shapes_and_sigmas(klein) -> None:
    policy = klein.policy(max_sequence_length=TOKENS)
    assert policy.latent_shape == (16, RESOLUTION // 4, RESOLUTION // 4)  # 4 channels × 2×2
    cond = policy.encode_prompts(PROMPTS)
    assert set(cond) == {"prompt_embeds"} and cond["prompt_embeds"].shape == (2, TOKENS, 24)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    v = policy.velocity(x, torch.full((2,), 0.5), cond, 2.5)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    images = policy.decode(x)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and 0 <= images.min() <= images.max() <= 1
    sigmas = policy.sigmas(NUM_STEPS)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and (sigmas.diff() < 0).all()
    # The empirical shift depends on the number of steps, not only on the image size.
    assert not torch.allclose(policy.sigmas(8)[::2], sigmas)
    with pytest.raises(ValueError, match="multiple of 4"):
        klein.policy(resolution=RESOLUTION + 2)


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5], ids=["no_cfg", "cfg"])
def test_ode_images_equal_the_pipeline(klein, guidance_scale) -> None:
    policy = klein.policy(max_sequence_length=TOKENS)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    ours = ode_images(policy, latents, guidance_scale)
    pipe = klein.pipeline()
    theirs = pipeline_images(pipe, latents, guidance_scale)
    torch.testing.assert_close(policy.sigmas(NUM_STEPS), pipe.scheduler.sigmas.float())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_distilled_checkpoints_ignore_guidance_like_the_pipeline(klein, tmp_path) -> None:
    base = klein.policy(max_sequence_length=TOKENS)
    distilled = klein.policy(
        make_tiny_flux2_klein(tmp_path, is_distilled=True), max_sequence_length=TOKENS
    )
    cond = base.encode_prompts(PROMPTS)
    x = base.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.7)
    assert (
        base.velocity(x, sigma, cond, 4.0) - base.velocity(x, sigma, cond, 1.0)
    ).abs().max() > 1e-3
    torch.testing.assert_close(
        distilled.velocity(x, sigma, cond, 4.0), base.velocity(x, sigma, cond, 1.0), rtol=0, atol=0
    )
    latents = base.initial_noise(2, torch.Generator().manual_seed(4))
    theirs = pipeline_images(distilled.pipeline, latents, 4.0)
    torch.testing.assert_close(ode_images(distilled, latents, 4.0), theirs, rtol=0, atol=2e-5)


def test_default_lora_reaches_the_single_stream_blocks(klein) -> None:
    from flowdppo.models.flux2_klein import FLUX2_LORA_TARGETS

    policy = klein.policy()
    names = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert any(n.startswith("single_transformer_blocks.") for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {
        "to_q", "to_k", "to_v", "0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
        "to_qkv_mlp_proj",
    }  # fmt: skip
    assert "to_qkv_mlp_proj" in FLUX2_LORA_TARGETS


def test_exported_lora_reproduces_the_policy_in_diffusers(klein, tmp_path) -> None:
    from flowdppo.models.export import export_lora

    policy = klein.policy(max_sequence_length=TOKENS)
    perturb_lora(policy)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(5))
    ours = ode_images(policy, latents, 2.5)
    out = export_lora(policy, tmp_path / "lora")
    pipe = klein.pipeline()
    assert (pipeline_images(pipe, latents, 2.5) - ours).abs().max() > 1e-3
    pipe.load_lora_weights(out)
    torch.testing.assert_close(pipeline_images(pipe, latents, 2.5), ours, rtol=0, atol=2e-5)


def test_trainer_runs_two_iterations_on_policy_with_cfg(klein, tmp_path) -> None:
    from test_trainer_tiny import _config, _weights

    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    trainer = Trainer(
        _config(klein, prompts, f"model.max_sequence_length={TOKENS}"), tmp_path / "r"
    )
    assert trainer.cfg.model.lora_target_modules[-1] == "to_qkv_mlp_proj"  # saved with the run
    before = _weights(trainer.policy)
    for _ in range(2):
        metrics = trainer.step()
        assert metrics["check/onpolicy_kl_max"] < 1e-10, metrics
        assert metrics["check/onpolicy_ratio_err_max"] < 1e-5, metrics
    after = _weights(trainer.policy)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("transformer.") and ".lora_" in n for n in changed)
    assert any(".to_qkv_mlp_proj.lora_B." in n for n in changed)


def test_bf16_with_offloaded_encoder_keeps_float32_maths(klein) -> None:
    policy = klein.policy(max_sequence_length=TOKENS, dtype="bfloat16", offload_text_encoders=True)
    cond = policy.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].dtype == torch.bfloat16
    assert policy.pipeline.vae.dtype == torch.float32
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    v = policy.velocity(x, torch.full((2,), 0.5), cond, 2.5)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    v.square().mean().backward()
    assert all(p.grad is not None for p in policy.trainable_parameters())
    assert policy.decode(x).dtype == torch.float32
