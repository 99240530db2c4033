"""FLUX.1 (``diffusers.FluxPipeline``) as a Flow-DPPO policy.

    policy = FluxPolicy.from_pretrained("black-forest-labs/FLUX.1-dev", device="cuda",
                                        resolution=512, gradient_checkpointing=True)
    v = policy.velocity(latents, sigma, cond, guidance_scale=3.5)  # distilled guidance

Latents in the protocol are the *unpacked* VAE latents [B, 16, H/8, W/8], so the core's step
maths sees one convention for every model; ``velocity`` packs them into 2×2 patches
[B, (H/16)·(W/16), 64] for the transformer and unpacks its output. Conditioning:
``prompt_embeds`` [B, max_sequence_length, 4096] (T5) and ``pooled_prompt_embeds`` [B, 768]
(CLIP pooled output), from the pipeline's own ``encode_prompt``.

``guidance_scale`` is FLUX.1-dev's *distilled* guidance: a number fed to the guidance embedding
in one conditional pass (3.5 is the usual value), not classifier-free guidance. Models without a
guidance embedding (FLUX.1-schnell) ignore it. ``true_cfg_scale`` > 1 (``from_pretrained``
option, ``model.true_cfg_scale``) adds FluxPipeline's *true* CFG on top: a second pass on each
prompt's negative prompt (the empty prompt by default) and ``v = v_neg + true_cfg_scale · (v -
v_neg)``, both passes with the same distilled guidance.

Where this differs from ``FluxPipeline.__call__`` (none of it changes the images at float32;
the equivalence test compares them):
- no denoising loop here: ``flowdppo.core.rollout`` calls ``velocity`` once per step, with
  float32 step maths on unpacked latents; packing happens inside ``velocity``;
- ``sigmas`` asks a private copy of the scheduler for the pipeline's schedule (linear
  ``1 → 1/T`` sigmas, resolution-dependent shift ``mu`` from the image-token count);
- true CFG runs when ``true_cfg_scale > 1`` whatever the negative prompt (the pipeline needs a
  ``negative_prompt`` argument, "" included, to run it); the two passes are one batch of 2B
  and are combined in float32 (the pipeline: two calls, combined in the model dtype);
- no IP-adapter or per-encoder prompts (``prompt_2``);
- the VAE decodes in float32 whatever the model dtype.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from flowdppo.models._diffusers_common import resolution_shift, scheduler_sigmas
from flowdppo.models._diffusers_policy import DiffusersPolicy, positive
from flowdppo.models.base import Cond


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)·(W/2), 4C]: each 2×2 patch becomes one token (channel-major)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, H/2, 2, W/2, 2]
    x = x.permute(0, 2, 4, 1, 3, 5)  # [B, H/2, W/2, C, 2, 2]
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of ``pack_latents``: [B, (H/2)·(W/2), 4C] -> [B, C, H, W]."""
    b, _, c4 = tokens.shape
    x = tokens.reshape(b, height // 2, width // 2, c4 // 4, 2, 2)  # [B, H/2, W/2, C, 2, 2]
    x = x.permute(0, 3, 1, 4, 2, 5)  # [B, C, H/2, 2, W/2, 2]
    return x.reshape(b, c4 // 4, height, width)


def image_positions(height: int, width: int, device: torch.device, dtype: torch.dtype):
    """RoPE positions of the packed image tokens: [(H/2)·(W/2), 3] rows ``(0, row, col)``."""
    rows = torch.arange(height // 2, device=device).repeat_interleave(width // 2)
    cols = torch.arange(width // 2, device=device).repeat(height // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(dtype)


class FluxPolicy(DiffusersPolicy):
    """FLUX.1 policy; construct with ``FluxPolicy.from_pretrained`` (see its docstring)."""

    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    default_max_sequence_length: ClassVar[int] = 512
    true_cfg_scale: float = 1.0

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    def _set_family_options(self, true_cfg_scale: float = 1.0, **options: Any) -> None:
        super()._set_family_options(**options)
        if not true_cfg_scale >= 1.0:
            raise ValueError(f"true_cfg_scale must be >= 1 (1 = off), got {true_cfg_scale}")
        self.true_cfg_scale = float(true_cfg_scale)

    def uses_negative_prompts(self) -> bool:
        """Only true CFG reads negative prompts (the distilled guidance has no negative branch)."""
        return self.true_cfg_scale > 1.0

    def _check_shapes(self) -> tuple[int, int, int]:
        scale = self.pipeline.vae_scale_factor
        self._check_multiple(scale * 2, f"VAE scale {scale} × 2 for the 2×2 latent packing")
        if self.max_sequence_length > 512:
            raise ValueError(f"max_sequence_length must be <= 512, got {self.max_sequence_length}")
        channels = self.pipeline.transformer.config.in_channels // 4
        return (channels, self.height // scale, self.width // scale)

    def _encode_uncached(self, prompts: list[str]) -> Cond:
        embeds, pooled, _text_ids = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
        )
        return {
            "prompt_embeds": embeds.to(self.dtype),
            "pooled_prompt_embeds": pooled.to(self.dtype),
        }

    @property
    def image_seq_len(self) -> int:
        """Number of packed image tokens: (H/2)·(W/2) of the latent grid."""
        return (self.latent_shape[1] // 2) * (self.latent_shape[2] // 2)

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """The pipeline's schedule: linear sigmas shifted by ``mu`` (from the token count) + 0."""
        scheduler = self.pipeline.scheduler
        base = None
        if not scheduler.config.get("use_flow_sigmas", False):
            base = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps).tolist()
        mu = resolution_shift(self.image_seq_len, scheduler.config, default_max_shift=1.15)
        return scheduler_sigmas(scheduler, num_inference_steps, sigmas=base, mu=mu)

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        if self.true_cfg_scale <= 1.0:
            return self._transformer(latents, sigma, positive(cond), guidance_scale)
        negative, pos = self.negative_branch(cond), positive(cond)
        both = {k: torch.cat([negative[k], pos[k]]) for k in pos}  # [2B, ...]: negative, then cond
        out = self._transformer(
            torch.cat([latents, latents]), torch.cat([sigma, sigma]), both, guidance_scale
        )
        v_neg, v = out.chunk(2)
        return v_neg + self.true_cfg_scale * (v - v_neg)

    def _transformer(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        """One transformer pass on unpacked ``latents``: float32 [B, *latent_shape]."""
        b, _, h, w = latents.shape
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=self.device)
        # The pipeline rounds the timestep to the model dtype before dividing by 1000; so do we.
        timestep = (sigma * 1000).to(self.dtype) / 1000
        text_positions = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=self.device)
        out = self.transformer(
            hidden_states=pack_latents(latents.to(self.dtype)),
            timestep=timestep,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=text_positions.to(self.dtype),
            img_ids=image_positions(h, w, self.device, self.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out.float(), h, w)
