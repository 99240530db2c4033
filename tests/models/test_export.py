"""Export → plain diffusers: ``load_lora_weights`` (LoRA) and ``from_pretrained`` (full FT)
reproduce the policy's ODE images; the rank/alpha metadata is what makes the scale right."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ode_images, perturb_lora
from safetensors import safe_open

from flowdppo.models.export import EXPORT_INFO, export_full, export_lora, export_lora_weights
from flowdppo.models.lora import lora_config, lora_state_dict


def test_exported_lora_loads_into_a_fresh_pipeline_with_the_same_images(family, tmp_path) -> None:
    policy = family.policy()
    perturb_lora(policy)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(5))
    ours = ode_images(policy, latents, family.guidance_scale)

    out = export_lora(policy, tmp_path / "lora")
    weights = out / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
        header = f.metadata()
    assert keys and all(k.startswith("transformer.") and ".default." not in k for k in keys)
    meta = json.loads(header["lora_adapter_metadata"])
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8
    assert json.loads((out / EXPORT_INFO).read_text())["family"] == family.name

    pipe = family.pipeline()
    base = family.pipeline_images(pipe, latents, family.guidance_scale)
    assert (base - ours).abs().max() > 1e-3  # the LoRA really changes the images
    pipe.load_lora_weights(out)
    theirs = family.pipeline_images(pipe, latents, family.guidance_scale)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)


def test_without_metadata_diffusers_would_scale_the_lora_wrongly(tiny_sd3_path, tmp_path) -> None:
    """Why the metadata is exported: alpha/rank = 2 here; diffusers' fallback uses 1."""
    from diffusers import StableDiffusion3Pipeline

    from flowdppo.models.sd3 import SD3Policy

    policy = SD3Policy.from_pretrained(
        tiny_sd3_path, resolution=16, max_sequence_length=8, lora_rank=4, lora_alpha=8
    )
    perturb_lora(policy)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(5))
    ours = ode_images(policy, latents, 1.0)
    bare = {k.replace(".default.", "."): v for k, v in lora_state_dict(policy.transformer).items()}
    StableDiffusion3Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=bare)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path)
    pipe.load_lora_weights(tmp_path)
    from conftest import PROMPTS

    theirs = pipe(
        PROMPTS,
        height=16,
        width=16,
        num_inference_steps=4,
        guidance_scale=1.0,
        max_sequence_length=8,
        latents=latents.clone(),
        output_type="pt",
    ).images
    assert (theirs - ours).abs().max() > 1e-3


def test_export_lora_weights_from_a_checkpoint_state_dict(family, tmp_path) -> None:
    """The CLI path: a checkpoint's lora_state_dict + settings, no model needed."""
    policy = family.policy()
    perturb_lora(policy)
    a = export_lora(policy, tmp_path / "a")
    b = export_lora_weights(
        lora_state_dict(policy.transformer),
        tmp_path / "b",
        family=family.name,
        metadata=lora_config(policy.transformer).to_dict(),
    )
    name = "pytorch_lora_weights.safetensors"
    with safe_open(str(a / name), "pt") as fa, safe_open(str(b / name), "pt") as fb:
        keys = sorted(fa.keys())
        assert fa.metadata() == fb.metadata() and keys == sorted(fb.keys())
        for key in keys:
            torch.testing.assert_close(fa.get_tensor(key), fb.get_tensor(key), rtol=0, atol=0)
    with pytest.raises(ValueError, match="lacks"):
        export_lora_weights({}, tmp_path / "c", family=family.name, metadata={"r": 4})
    with pytest.raises(ValueError, match="family"):
        export_lora_weights(
            {}, tmp_path / "c", family="sdxl", metadata=lora_config(policy.transformer).to_dict()
        )


def test_full_finetune_exports_a_transformer_folder(family, tmp_path) -> None:
    policy = family.policy(full_finetune=True)
    with pytest.raises(ValueError, match="export_full"):
        export_lora(policy, tmp_path / "x")
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.02 * torch.randn_like(p))
    latents = policy.initial_noise(2, torch.Generator().manual_seed(5))
    ours = ode_images(policy, latents, family.guidance_scale)
    out = export_full(policy, tmp_path / "full")
    transformer_cls = type(policy.transformer)
    pipe = family.pipeline()
    pipe.transformer = transformer_cls.from_pretrained(out, subfolder="transformer")
    theirs = family.pipeline_images(pipe, latents, family.guidance_scale)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="export_lora"):
        export_full(family.policy(), tmp_path / "y")
