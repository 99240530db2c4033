"""Fixtures for the diffusers adapters: tiny SD3/FLUX/Qwen-Image/FLUX.2-klein/Wan pipelines
saved once per session."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tiny_pipelines, importable by other test dirs

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from tiny_pipelines import (
    MAX_SEQUENCE_LENGTH,
    RESOLUTION,
    build_tiny_flux,
    build_tiny_flux2_klein,
    build_tiny_qwen_image,
    build_tiny_sd3,
    build_tiny_wan,
)

PROMPTS = ["a red circle", "a big blue cat"]
NUM_STEPS = 4


@dataclass(frozen=True)
class Family:
    """One model family under test: its policy class, pipeline class, folder and guidance."""

    name: str
    policy_cls: Any
    pipeline_cls: Any
    path: Path
    guidance_scale: float

    def policy(self, source: Any = None, **kwargs: Any):
        options = {
            "device": "cpu",
            "resolution": RESOLUTION,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "lora_rank": 4,
            "lora_alpha": 8,
            **kwargs,
        }
        return self.policy_cls.from_pretrained(source or self.path, **options)

    def pipeline(self):
        return self.pipeline_cls.from_pretrained(self.path)

    def pipeline_images(self, pipe: Any, latents: torch.Tensor, guidance_scale: float):
        """The diffusers pipeline's own images for these initial (unpacked) latents."""
        from flowdppo.models.flux import pack_latents

        given = pack_latents(latents) if self.name == "flux" else latents
        return pipe(
            PROMPTS,
            height=RESOLUTION,
            width=RESOLUTION,
            num_inference_steps=NUM_STEPS,
            guidance_scale=guidance_scale,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            latents=given.clone(),
            output_type="pt",
        ).images


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="session")
def tiny_flux_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="session")
def tiny_qwen_image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen_image(tmp_path_factory.mktemp("qwen_image"))


@pytest.fixture(scope="session")
def tiny_flux2_klein_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("flux2_klein"))


@pytest.fixture(scope="session")
def tiny_wan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan"))


WAN22_BOUNDARY_RATIO = 0.7  # (Wan2.2-T2V-A14B: 0.875) splits the tiny 4-step schedule 2 / 2


@pytest.fixture(scope="session")
def tiny_wan22_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-expert WanPipeline (Wan2.2-T2V-A14B layout: transformer_2, boundary_ratio)."""
    return build_tiny_wan(tmp_path_factory.mktemp("wan22"), boundary_ratio=WAN22_BOUNDARY_RATIO)


@pytest.fixture(params=["sd3", "flux"])
def family(request: pytest.FixtureRequest) -> Family:
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from flowdppo.models.flux import FluxPolicy
    from flowdppo.models.sd3 import SD3Policy

    if request.param == "sd3":
        path = request.getfixturevalue("tiny_sd3_path")
        return Family("sd3", SD3Policy, StableDiffusion3Pipeline, path, 1.0)
    path = request.getfixturevalue("tiny_flux_path")
    return Family("flux", FluxPolicy, FluxPipeline, path, 3.5)


def ode_images(policy: Any, latents: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Images of the policy's deterministic (ODE) sampler through the core rollout loop."""
    from flowdppo.core.rollout import sample

    cond = policy.encode_prompts(PROMPTS)
    out = sample(
        lambda x, s: policy.velocity(x, s, cond, guidance_scale),
        latents,
        policy.sigmas(NUM_STEPS),
        sampler="ode",
    )
    return policy.decode(out.latents)


def perturb_lora(policy: Any, seed: int = 1, scale: float = 0.2) -> None:
    """Move the LoRA weights away from their zero-update init (as training would)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
