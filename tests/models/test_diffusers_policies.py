"""SD3Policy / FluxPolicy on tiny random pipelines: protocol, equivalence with diffusers,
caching, frozen parts, reference model, precision, loading errors."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import NUM_STEPS, PROMPTS, ode_images, perturb_lora
from tiny_pipelines import RESOLUTION

from flowdppo.models.base import Policy
from flowdppo.models.lora import has_lora


def test_protocol_shapes_and_dtypes(family) -> None:
    policy = family.policy()
    assert isinstance(policy, Policy)
    c, h, w = policy.latent_shape
    assert (c, h, w) == (4, RESOLUTION // 2, RESOLUTION // 2)
    cond = policy.encode_prompts(PROMPTS)
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert all(t.shape[0] == 2 and t.dtype == torch.float32 for t in cond.values())
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    assert x.shape == (2, c, h, w) and x.dtype == torch.float32
    v = policy.velocity(x, torch.full((2,), 0.5), cond, family.guidance_scale)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    images = policy.decode(x)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    sigmas = policy.sigmas(NUM_STEPS)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (NUM_STEPS + 1,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and (sigmas.diff() < 0).all()
    with pytest.raises(ValueError, match="latents have shape"):
        policy.velocity(x[:, :, :4], torch.full((2,), 0.5), cond)


@pytest.mark.parametrize("cfg", [False, True])
def test_ode_images_equal_the_diffusers_pipeline(family, cfg) -> None:
    """Same initial latents, same steps: our rollout loop + velocity == pipeline.__call__.

    Also checks that ``sigmas`` are the pipeline scheduler's own (FLUX: with dynamic shift).
    """
    if cfg and family.name == "flux":
        pytest.skip("FLUX uses distilled guidance (guidance embedding), not CFG")
    guidance = 2.0 if cfg else family.guidance_scale
    policy = family.policy()
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    ours = ode_images(policy, latents, guidance)
    pipe = family.pipeline()
    theirs = family.pipeline_images(pipe, latents, guidance)
    torch.testing.assert_close(policy.sigmas(NUM_STEPS), pipe.scheduler.sigmas.float())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_flux_guidance_is_the_distilled_embedding(tiny_flux_path) -> None:
    from flowdppo.models.flux import FluxPolicy, pack_latents, unpack_latents

    x = torch.randn(2, 4, 6, 8)
    torch.testing.assert_close(unpack_latents(pack_latents(x), 6, 8), x, rtol=0, atol=0)
    policy = FluxPolicy.from_pretrained(tiny_flux_path, resolution=16, max_sequence_length=8)
    cond = policy.encode_prompts(PROMPTS)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.7)
    v1, v2 = (policy.velocity(x, sigma, cond, g) for g in (1.0, 3.5))
    assert not torch.allclose(v1, v2)


def test_prompts_encoded_once_and_encoders_frozen(family) -> None:
    policy = family.policy()
    calls = []
    policy.pipeline.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    first = policy.encode_prompts([PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert len(calls) == 1 and policy.num_cached_prompts == 2
    again = policy.encode_prompts([PROMPTS[1]])
    assert len(calls) == 1
    torch.testing.assert_close(again["prompt_embeds"][0], first["prompt_embeds"][1])
    torch.testing.assert_close(first["prompt_embeds"][0], first["prompt_embeds"][2])
    # Batch composition does not change a prompt's embedding.
    alone = family.policy().encode_prompts([PROMPTS[1]])
    torch.testing.assert_close(alone["prompt_embeds"][0], first["prompt_embeds"][1])

    trainable = dict(policy.transformer.named_parameters())
    names = [n for n, p in trainable.items() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    perturb_lora(policy)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    loss = policy.velocity(x, torch.full((2,), 0.6), policy.encode_prompts(PROMPTS)).square()
    loss.mean().backward()
    frozen = [policy.pipeline.vae, policy.pipeline.text_encoder, policy.pipeline.text_encoder_2]
    for module in frozen:
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert all((p.grad is not None) == p.requires_grad for p in trainable.values())


def test_reference_is_the_base_model(family) -> None:
    policy = family.policy()
    cond = policy.encode_prompts(PROMPTS)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.8)
    base = policy.velocity(x, sigma, cond, family.guidance_scale)
    perturb_lora(policy)
    trained = policy.velocity(x, sigma, cond, family.guidance_scale)
    assert (trained - base).abs().max() > 1e-3
    with policy.reference():
        torch.testing.assert_close(policy.velocity(x, sigma, cond, family.guidance_scale), base)
    torch.testing.assert_close(policy.velocity(x, sigma, cond, family.guidance_scale), trained)


def test_gradient_checkpointing_gives_the_same_gradients(family) -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy = family.policy(gradient_checkpointing=checkpointing)
        perturb_lora(policy)
        cond = policy.encode_prompts(PROMPTS)
        x = policy.initial_noise(2, torch.Generator().manual_seed(0))
        policy.velocity(x, torch.full((2,), 0.5), cond).square().mean().backward()
        grads.append([p.grad.clone() for p in policy.trainable_parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_lora_target_modules_are_configurable(family) -> None:
    policy = family.policy(lora_target_modules=["to_q"])
    names = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert names and all(".to_q.lora_" in n for n in names)
    with pytest.raises(ValueError, match="target_modules"):
        family.policy(lora_target_modules=["no_such_layer"])


def test_full_finetune_trains_everything_with_a_frozen_reference(family) -> None:
    policy = family.policy(full_finetune=True)
    assert not has_lora(policy.transformer)
    params = list(policy.trainable_parameters())
    assert len(params) == len(list(policy.transformer.parameters()))
    cond = policy.encode_prompts(PROMPTS)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.5)
    base = policy.velocity(x, sigma, cond, family.guidance_scale)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    assert (policy.velocity(x, sigma, cond, family.guidance_scale) - base).abs().max() > 1e-4
    with policy.reference():
        torch.testing.assert_close(policy.velocity(x, sigma, cond, family.guidance_scale), base)


def test_bf16_model_keeps_float32_maths(tiny_sd3_path) -> None:
    from flowdppo.models.sd3 import SD3Policy

    policy = SD3Policy.from_pretrained(
        tiny_sd3_path, dtype="bfloat16", resolution=16, max_sequence_length=8, lora_rank=4
    )
    assert policy.pipeline.vae.dtype == torch.float32
    assert policy.pipeline.text_encoder.dtype == torch.bfloat16
    assert next(policy.transformer.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    cond = policy.encode_prompts(PROMPTS)
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    assert policy.velocity(x, torch.full((2,), 0.5), cond).dtype == torch.float32
    assert policy.decode(x).dtype == torch.float32


def test_in_memory_pipeline_is_accepted_and_bad_resolution_rejected(family) -> None:
    pipe = family.pipeline()
    policy = family.policy(pipe)
    assert policy.pipeline is pipe and has_lora(pipe.transformer)
    with pytest.raises(ValueError, match="multiple of"):
        family.policy(resolution=RESOLUTION + 2)


def test_missing_hub_id_fails_fast_with_download_hint(monkeypatch, tmp_path) -> None:
    from flowdppo.models.flux import FluxPolicy
    from flowdppo.models.sd3 import SD3Policy

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    for cls in (SD3Policy, FluxPolicy):
        name = "flowdppo-tests/no-such-model-7f3a"
        start = time.monotonic()
        with pytest.raises(FileNotFoundError, match=r"flowdppo-tests/no-such-model-7f3a") as err:
            cls.from_pretrained(name)
        assert time.monotonic() - start < 20
        assert f"hf download {name}" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SD3Policy.from_pretrained(str(tmp_path / "missing_folder"))
    with pytest.raises(TypeError, match="folder or a hub id"):
        SD3Policy.from_pretrained(42)
    with pytest.raises(ValueError, match="dtype"):
        SD3Policy.from_pretrained(str(tmp_path), dtype="fp8")


@pytest.mark.parametrize("full_finetune", [False, True])
def test_trainable_state_dict_roundtrip(family, full_finetune) -> None:
    source = family.policy(full_finetune=full_finetune)
    with torch.no_grad():
        for p in source.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.clone() for k, v in source.trainable_state_dict().items()}
    assert len(state) == len(list(source.trainable_parameters()))
    target = family.policy(full_finetune=full_finetune)
    target.load_trainable_state_dict(state)
    cond = target.encode_prompts(PROMPTS)
    x = target.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.5)
    torch.testing.assert_close(
        target.velocity(x, sigma, cond), source.velocity(x, sigma, cond), rtol=0, atol=0
    )
    with pytest.raises(KeyError, match="missing"):
        target.load_trainable_state_dict(dict(list(state.items())[1:]))
