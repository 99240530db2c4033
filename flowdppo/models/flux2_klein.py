"""FLUX.2-klein (``diffusers.Flux2KleinPipeline``) as a Flow-DPPO policy.

    policy = Flux2KleinPolicy.from_pretrained("black-forest-labs/FLUX.2-klein-base-9B",
                                              device="cuda", resolution=512)
    v = policy.velocity(latents, sigma, cond, guidance_scale=4.0)  # CFG, empty negative prompt

Latents in the protocol are the pipeline's own denoising space: the VAE latents [B, 32, H/8, W/8]
patchified 2×2 into [B, 128, H/16, W/16] and normalized per channel by the VAE's batch-norm
statistics. The flow runs there (the initial noise is standard normal in that space, and the
normalization is per channel, so it cannot move to the unpatchified latents); ``velocity``
flattens the grid into tokens [B, (H/16)·(W/16), 128] and ``decode`` undoes the normalization and
the patchify before the VAE. Conditioning: ``prompt_embeds`` [B, L, 3·hidden], the hidden states of
layers 9, 18 and 27 of the Qwen3 text encoder side by side, on the prompt in Qwen3's chat format
padded to ``L = max_sequence_length`` tokens, from the pipeline's own ``encode_prompt``.

``guidance_scale`` is the pipeline's: classifier-free guidance above 1 against the empty prompt
(FLUX.2-klein's fixed negative prompt), for the base (undistilled) checkpoints. The step-distilled
checkpoints (the pipeline's ``is_distilled``) ignore it, as the pipeline does: one conditional
pass.

Where this differs from ``Flux2KleinPipeline.__call__`` (none of it changes the images at
float32; the equivalence test compares them):
- no denoising loop here: ``flowdppo.core.rollout`` calls ``velocity`` once per step, with
  float32 step maths on the patchified latents;
- the two CFG branches run as one batch (the pipeline makes two calls) and are combined in
  float32 (the pipeline: in the model dtype); the empty prompt is encoded once and kept outside
  the prompt cache;
- ``sigmas`` asks a private copy of the scheduler for the pipeline's schedule (linear
  ``1 → 1/T`` sigmas, the pipeline's empirical ``mu`` from the image-token count and T);
- no reference images (image editing), ``prompt_embeds`` inputs or KV cache;
- the VAE decodes in float32 whatever the model dtype.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from flowdppo.models._diffusers_common import DEFAULT_LORA_TARGETS, scheduler_sigmas
from flowdppo.models._diffusers_policy import DiffusersPolicy
from flowdppo.models.base import Cond

# The double-stream blocks' attention projections (as for FLUX.1), plus the single-stream blocks'
# fused QKV + MLP-in projection: FLUX.2's single blocks have no separate to_q/to_k/to_v, and
# without it most of the network (20 of 25 blocks in klein-4B) would stay frozen.
FLUX2_LORA_TARGETS = [*DEFAULT_LORA_TARGETS, "to_qkv_mlp_proj"]


def grid_positions(height: int, width: int, device: torch.device) -> torch.Tensor:
    """RoPE positions of the image tokens: [height·width, 4] rows ``(0, row, col, 0)``, int64."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=1)


def text_positions(length: int, device: torch.device) -> torch.Tensor:
    """RoPE positions of the text tokens: [length, 4] rows ``(0, 0, 0, l)``, int64."""
    tokens = torch.arange(length, device=device)
    zeros = torch.zeros_like(tokens)
    return torch.stack([zeros, zeros, zeros, tokens], dim=1)


class Flux2KleinPolicy(DiffusersPolicy):
    """FLUX.2-klein policy; construct with ``Flux2KleinPolicy.from_pretrained``."""

    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    default_max_sequence_length: ClassVar[int] = 512  # the pipeline's default
    default_lora_targets: ClassVar[list[str]] = FLUX2_LORA_TARGETS

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline

    def _check_shapes(self) -> tuple[int, int, int]:
        scale = self.pipeline.vae_scale_factor
        self._check_multiple(scale * 2, f"VAE scale {scale} × 2 for the 2×2 patchify")
        channels = self.pipeline.transformer.config.in_channels
        return (channels, self.height // (scale * 2), self.width // (scale * 2))

    def uses_negative_prompts(self) -> bool:
        """No: the pipeline's negative prompt is fixed (the empty prompt)."""
        return False

    def _encode_uncached(self, prompts: list[str]) -> Cond:
        embeds, _text_ids = self.pipeline.encode_prompt(
            prompt=prompts, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": embeds.to(self.dtype)}

    @property
    def guided(self) -> bool:
        """Whether ``guidance_scale > 1`` means CFG (base checkpoints) or nothing (distilled)."""
        return not self.pipeline.config.get("is_distilled", False)

    @property
    def image_seq_len(self) -> int:
        return self.latent_shape[1] * self.latent_shape[2]

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """The pipeline's schedule: linear sigmas shifted by its empirical ``mu`` (from the
        image-token count and ``num_inference_steps``), then 0."""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        scheduler = self.pipeline.scheduler
        base = None
        if not scheduler.config.get("use_flow_sigmas", False):
            base = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps).tolist()
        mu = compute_empirical_mu(self.image_seq_len, num_inference_steps)
        return scheduler_sigmas(scheduler, num_inference_steps, sigmas=base, mu=mu)

    def _transformer(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """One transformer call on [B, C, h, w]; returns [B, C, h, w] in the model dtype."""
        b, c, h, w = latents.shape
        tokens = latents.to(self.dtype).reshape(b, c, h * w).permute(0, 2, 1)  # [B, h·w, C]
        # The pipeline rounds the timestep to the model dtype before dividing by 1000; so do we.
        timestep = (sigma * 1000).to(self.dtype) / 1000
        out = self.transformer(
            hidden_states=tokens,
            timestep=timestep,
            guidance=None,
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=text_positions(cond["prompt_embeds"].shape[1], self.device),
            img_ids=grid_positions(h, w, self.device),
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1).reshape(b, c, h, w)

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        if guidance_scale <= 1.0 or not self.guided:  # the pipeline's do_classifier_free_guidance
            return self._transformer(latents, sigma, cond).float()
        batch = latents.shape[0]
        empty = self.unconditional()  # [1, ...]
        uncond = {k: v.expand(batch, *v.shape[1:]) for k, v in empty.items()}
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}  # [2B, ...]: uncond, then cond
        out = self._transformer(torch.cat([latents, latents]), torch.cat([sigma, sigma]), both)
        v_uncond, v_cond = out.float().chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, 4C, h, w] to [0, 1] images [B, 3, 16h, 16w] (scale 8 × patch 2): the
        VAE's batch-norm statistics undone, the 2×2 patches unfolded, decoded in float32."""
        vae = self.pipeline.vae
        x = latents.to(device=next(vae.parameters()).device, dtype=torch.float32)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).float()
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1).float() + vae.config.batch_norm_eps)
        x = x * std + mean
        b, c4, h, w = x.shape
        x = x.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # [B, C, h, 2, w, 2]
        x = x.reshape(b, c4 // 4, h * 2, w * 2)
        with torch.no_grad():
            images = vae.decode(x, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)
