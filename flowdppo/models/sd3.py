"""Stable Diffusion 3 / 3.5 (``diffusers.StableDiffusion3Pipeline``) as a Flow-DPPO policy.

    policy = SD3Policy.from_pretrained("stabilityai/stable-diffusion-3.5-medium", device="cuda",
                                       resolution=512, lora_rank=32, lora_alpha=64)

Conditioning: ``prompt_embeds`` [B, 77 + max_sequence_length, joint_attention_dim] (the 77
tokens of the two CLIP encoders, their embeddings concatenated along the channels and zero-padded
to the T5 width, then the T5 tokens) and
``pooled_prompt_embeds`` [B, sum of CLIP projection dims], from the pipeline's own
``encode_prompt``. Latents are the VAE latents [B, 16, H/8, W/8] (SD3.5); the transformer gets
``timestep = sigma · num_train_timesteps`` like the pipeline.

Where this differs from ``StableDiffusion3Pipeline.__call__`` (none of it changes the images at
float32; the equivalence test compares them):
- no denoising loop here: ``flowdppo.core.rollout`` calls ``velocity`` once per step and does
  the step maths in float32 (the pipeline's scheduler also steps in float32);
- classifier-free guidance combines the two branches in float32 (the pipeline does it in the
  model dtype); the unconditional branch is the empty prompt, encoded once and kept outside
  the prompt cache (``unconditional``);
- no negative prompts, ``clip_skip``, skip-layer guidance or IP-adapter;
- the scheduler is queried on a private copy (``sigmas``), so the pipeline's scheduler state is
  never touched; dynamic shifting, when the scheduler config asks for it, uses the pipeline's
  image-token count and its default ``max_shift`` of 1.16;
- the VAE decodes in float32 whatever the model dtype.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from flowdppo.models._diffusers_common import resolution_shift, scheduler_sigmas
from flowdppo.models._diffusers_policy import DiffusersPolicy
from flowdppo.models.base import Cond


class SD3Policy(DiffusersPolicy):
    """SD3/SD3.5 policy; construct with ``SD3Policy.from_pretrained`` (see its docstring)."""

    text_encoder_names: ClassVar[tuple[str, ...]] = (
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
    )
    default_max_sequence_length: ClassVar[int] = 256

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def _check_shapes(self) -> tuple[int, int, int]:
        config = self.pipeline.transformer.config
        multiple = self.pipeline.vae_scale_factor * config.patch_size
        if self.resolution % multiple:
            raise ValueError(
                f"resolution {self.resolution} must be a multiple of {multiple} "
                f"(VAE scale {self.pipeline.vae_scale_factor} × patch size {config.patch_size})"
            )
        side = self.resolution // self.pipeline.vae_scale_factor
        return (config.in_channels, side, side)

    def _encode_uncached(self, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {
            "prompt_embeds": embeds.to(self.dtype),
            "pooled_prompt_embeds": pooled.to(self.dtype),
        }

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """The pipeline scheduler's sigmas, float32 [T + 1] from 1 to 0 (SD3.5: shift 3)."""
        scheduler = self.pipeline.scheduler
        mu = None
        if scheduler.config.get("use_dynamic_shifting", False):
            patch = self.transformer.config.patch_size
            tokens = (self.latent_shape[1] // patch) * (self.latent_shape[2] // patch)
            mu = resolution_shift(tokens, scheduler.config, default_max_shift=1.16)
        return scheduler_sigmas(scheduler, num_inference_steps, mu=mu)

    def _transformer(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        timestep = sigma * self.pipeline.scheduler.config.num_train_timesteps  # [B], float32
        return self.transformer(
            hidden_states=latents.to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        if guidance_scale <= 1.0:  # the pipeline's rule: CFG only for guidance_scale > 1
            return self._transformer(latents, sigma, cond).float()
        batch = latents.shape[0]
        empty = self.unconditional()  # [1, ...]
        uncond = {k: v.expand(batch, *v.shape[1:]) for k, v in empty.items()}
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}  # [2B, ...]: uncond, then cond
        out = self._transformer(torch.cat([latents, latents]), torch.cat([sigma, sigma]), both)
        v_uncond, v_cond = out.float().chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)
