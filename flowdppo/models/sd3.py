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
  model dtype); the negative branch is each prompt's negative prompt (``negative_prompt``,
  ``set_negative_prompts``), the empty prompt by default, encoded once and kept outside the
  prompt cache (``unconditional``);
- skip-layer guidance (SD3.5's ``skip_guidance_layers``) only in ``evaluation_velocity``, the
  velocity of the evaluation sampler; the step index it needs is found from ``sigma``;
- no ``clip_skip``, per-encoder prompts (``prompt_2``, ``prompt_3``) or IP-adapter;
- the scheduler is queried on a private copy (``sigmas``), so the pipeline's scheduler state is
  never touched; dynamic shifting, when the scheduler config asks for it, uses the pipeline's
  image-token count and its default ``max_shift`` of 1.16;
- the VAE decodes in float32 whatever the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from flowdppo.models._diffusers_common import (
    autocast_context,
    resolution_shift,
    scheduler_sigmas,
)
from flowdppo.models._diffusers_policy import DiffusersPolicy, positive
from flowdppo.models.base import Cond


@dataclass(frozen=True)
class SkipLayerGuidance:
    """SD3.5's skip-layer guidance, as ``StableDiffusion3Pipeline`` takes it.

    At step ``i`` of ``T`` with ``start·T < i < stop·T`` (strict, as the pipeline) and CFG on,
    ``v = v_cfg + scale · (v_cond - v_skip)``, where ``v_skip`` is the conditional prediction with
    the transformer blocks ``layers`` skipped (the pipeline's ``skip_guidance_layers``,
    ``skip_layer_guidance_scale``, ``_start`` and ``_stop``; SD3.5-Medium: layers [7, 8, 9]).
    """

    layers: tuple[int, ...]
    scale: float = 2.8
    start: float = 0.01
    stop: float = 0.2

    def applies(self, step: int, num_steps: int) -> bool:
        """Whether step ``step`` of ``num_steps`` gets the skip-layer term."""
        return num_steps * self.start < step < num_steps * self.stop


class SD3Policy(DiffusersPolicy):
    """SD3/SD3.5 policy; construct with ``SD3Policy.from_pretrained`` (see its docstring)."""

    text_encoder_names: ClassVar[tuple[str, ...]] = (
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
    )
    default_max_sequence_length: ClassVar[int] = 256
    skip_layer_guidance: SkipLayerGuidance | None = None  # evaluation only

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def _check_shapes(self) -> tuple[int, int, int]:
        config = self.pipeline.transformer.config
        scale, patch = self.pipeline.vae_scale_factor, config.patch_size
        self._check_multiple(scale * patch, f"VAE scale {scale} × patch size {patch}")
        limit = (config.get("pos_embed_max_size") or 0) * patch * scale
        if limit and max(self.height, self.width) > limit:
            raise ValueError(
                f"height {self.height} × width {self.width}: a side is above {limit} pixels, the "
                f"transformer's position embedding (pos_embed_max_size {config.pos_embed_max_size}"
                f" patches × {patch} × VAE scale {scale})"
            )
        return (config.in_channels, self.height // scale, self.width // scale)

    def set_skip_layer_guidance(self, slg: SkipLayerGuidance | None) -> None:
        """Use ``slg`` in ``evaluation_velocity`` (None: off); layers must exist."""
        blocks = len(self.transformer.transformer_blocks)
        if slg is not None and not all(0 <= i < blocks for i in slg.layers):
            raise ValueError(
                f"skip_guidance_layers {list(slg.layers)}: this transformer has blocks 0..{blocks - 1}"
            )
        self.skip_layer_guidance = slg

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

    def _transformer(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Cond,
        skip_layers: list[int] | None = None,
    ) -> torch.Tensor:
        timestep = sigma * self.pipeline.scheduler.config.num_train_timesteps  # [B], float32
        return self.transformer(
            hidden_states=latents.to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
            **({} if skip_layers is None else {"skip_layers": skip_layers}),
        )[0]

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        return self._guided(latents, sigma, cond, guidance_scale)[0]

    def _guided(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CFG velocity, conditional velocity), float32 [B, *latent_shape]."""
        if guidance_scale <= 1.0:  # the pipeline's rule: CFG only for guidance_scale > 1
            v = self._transformer(latents, sigma, positive(cond)).float()
            return v, v
        negative, pos = self.negative_branch(cond), positive(cond)
        both = {k: torch.cat([negative[k], pos[k]]) for k in pos}  # [2B, ...]: negative, then cond
        out = self._transformer(torch.cat([latents, latents]), torch.cat([sigma, sigma]), both)
        v_uncond, v_cond = out.float().chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond), v_cond

    def evaluation_velocity(
        self, sigmas: torch.Tensor, guidance_scale: float
    ) -> Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]:
        """The evaluation sampler's ``velocity(x, sigma, cond)`` over the schedule ``sigmas``
        [T + 1]: ``velocity`` with CFG, plus skip-layer guidance when set (``SkipLayerGuidance``;
        step ``i`` is the index of ``sigma`` in ``sigmas``, as the rollout loop queries them)."""
        slg = self.skip_layer_guidance
        if slg is None or guidance_scale <= 1.0:  # the pipeline skips layers only under CFG
            return lambda x, s, c: self.velocity(x, s, c, guidance_scale)
        steps = sigmas[:-1].to(torch.float32)

        def velocity(x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
            sigma = self._checked_sigma(x, sigma, cond)
            step = int((steps - float(sigma[0].cpu())).abs().argmin())
            if not slg.applies(step, len(steps)):
                return self.velocity(x, sigma, cond, guidance_scale)
            x = x.to(self.device)
            with torch.no_grad(), autocast_context(self.device, self.dtype, self.full_finetune):
                v, v_cond = self._guided(x, sigma, cond, guidance_scale)
                v_skip = self._transformer(x, sigma, positive(cond), list(slg.layers)).float()
            return v + slg.scale * (v_cond - v_skip)

        return velocity
