"""Qwen-Image (``diffusers.QwenImagePipeline``) as a Flow-DPPO policy.

    policy = QwenImagePolicy.from_pretrained("Qwen/Qwen-Image", device="cuda", resolution=512,
                                             negative_prompt=" ", gradient_checkpointing=True)
    v = policy.velocity(latents, sigma, cond, guidance_scale=4.0)  # true CFG, the negative prompt

Latents in the protocol are the *unpacked* VAE latents [B, 16, H/8, W/8] (the pipeline's
``[B, 1, 16, H/8, W/8]`` video-shaped latents without the frame axis); ``velocity`` packs them
into 2×2 patches [B, (H/16)·(W/16), 64] for the transformer, as FLUX.1 does. Conditioning:
``prompt_embeds`` [B, L, 3584], the last hidden state of the Qwen2.5-VL text encoder on the
pipeline's chat template minus its 34-token system prefix, and ``prompt_embeds_mask`` [B, L]
(bool), both from the pipeline's own ``encode_prompt``. The pipeline pads a batch to its longest
prompt; here every prompt is zero-padded to ``L = max_sequence_length`` so that the prompt cache
can stack any prompts, and ``velocity`` cuts a batch back to its longest prompt before the
transformer call (the padded tokens are masked out of attention, so neither changes a value).

``guidance_scale`` is the pipeline's ``true_cfg_scale``: above 1, classifier-free guidance
against each prompt's negative prompt (``negative_prompt``, default ``" "``, the model card's, or
the prompt's own from ``set_negative_prompts``), whose combined velocity is
rescaled, per packed token, to the norm of the conditional one, as the pipeline does. Qwen-Image
has no guidance embedding (its transformers with ``guidance_embeds=True`` are refused: diffusers
cannot run them).

Where this differs from ``QwenImagePipeline.__call__`` (none of it changes the images at float32;
the equivalence test compares them):
- no denoising loop here: ``flowdppo.core.rollout`` calls ``velocity`` once per step, with
  float32 step maths on unpacked latents; packing happens inside ``velocity``;
- the two CFG branches run as one batch (the pipeline makes two calls) and are combined and
  rescaled in float32 (the pipeline: in the model dtype); the default negative prompt is
  encoded once and kept outside the prompt cache;
- ``sigmas`` asks a private copy of the scheduler for the pipeline's schedule (linear
  ``1 → 1/T`` sigmas, the resolution-dependent shift ``mu`` of the pipeline's ``calculate_shift``
  and the scheduler's own exponential time shift and terminal stretch);
- no ``prompt_embeds`` inputs, attention kwargs or controlnets;
- the VAE decodes in float32 whatever the model dtype.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from flowdppo.models._diffusers_common import scheduler_sigmas
from flowdppo.models._diffusers_policy import DiffusersPolicy, positive
from flowdppo.models.base import Cond
from flowdppo.models.flux import pack_latents, unpack_latents

DEFAULT_NEGATIVE_PROMPT = " "  # what the Qwen-Image model card passes with true_cfg_scale 4


class QwenImagePolicy(DiffusersPolicy):
    """Qwen-Image policy; construct with ``QwenImagePolicy.from_pretrained`` (see its docstring)."""

    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    default_max_sequence_length: ClassVar[int] = 512  # the pipeline's default
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import QwenImagePipeline

        return QwenImagePipeline

    def _check_shapes(self) -> tuple[int, int, int]:
        scale = self.pipeline.vae_scale_factor
        self._check_multiple(scale * 2, f"VAE scale {scale} × 2 for the 2×2 latent packing")
        if not 1 <= self.max_sequence_length <= 1024:
            raise ValueError(
                f"max_sequence_length must be in [1, 1024] (QwenImagePipeline's limit), "
                f"got {self.max_sequence_length}"
            )
        if self.pipeline.transformer.config.guidance_embeds:
            raise ValueError(
                "this Qwen-Image transformer has guidance_embeds=True; guidance-distilled "
                "Qwen-Image variants are not supported (diffusers' QwenImageTransformer2DModel "
                "cannot run them)"
            )
        channels = self.pipeline.transformer.config.in_channels // 4
        return (channels, self.height // scale, self.width // scale)

    def _encode_uncached(self, prompts: list[str]) -> Cond:
        """The pipeline's embeddings, zero-padded to ``max_sequence_length`` tokens + their mask."""
        embeds, mask = self.pipeline.encode_prompt(
            prompt=prompts, device=self.device, max_sequence_length=self.max_sequence_length
        )
        n, length, width = embeds.shape
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(n, length, dtype=torch.bool, device=embeds.device)
        padded = embeds.new_zeros(n, self.max_sequence_length, width)  # [n, L, D]
        padded[:, :length] = embeds
        full_mask = torch.zeros(n, self.max_sequence_length, dtype=torch.bool, device=embeds.device)
        full_mask[:, :length] = mask.bool()
        return {"prompt_embeds": padded.to(self.dtype), "prompt_embeds_mask": full_mask}

    @property
    def image_seq_len(self) -> int:
        """Number of packed image tokens: (H/2)·(W/2) of the latent grid."""
        return (self.latent_shape[1] // 2) * (self.latent_shape[2] // 2)

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """The pipeline's schedule: linear sigmas, shift ``mu`` from the image-token count, the
        scheduler's time shift (exponential, terminal 0.02 for Qwen-Image), then 0."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        scheduler = self.pipeline.scheduler
        config = scheduler.config
        base = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps).tolist()
        mu = calculate_shift(
            self.image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return scheduler_sigmas(scheduler, num_inference_steps, sigmas=base, mu=mu)

    def _transformer(
        self, tokens: torch.Tensor, sigma: torch.Tensor, cond: Cond, grid: tuple[int, int]
    ):
        """One transformer call on packed tokens [B, N, 4C]; the text cut to the longest prompt."""
        mask = cond["prompt_embeds_mask"]  # [B, L] bool, valid tokens first
        longest = int(mask.sum(dim=1).max())
        mask = mask[:, :longest]
        # The pipeline rounds the timestep to the model dtype before dividing by 1000; so do we.
        timestep = (sigma * 1000).to(self.dtype) / 1000
        return self.transformer(
            hidden_states=tokens,
            timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"][:, :longest],
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            img_shapes=[[(1, *grid)]] * tokens.shape[0],
            return_dict=False,
        )[0]

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        h, w = latents.shape[-2:]
        tokens = pack_latents(latents.to(self.dtype))  # [B, (h/2)(w/2), 4C]
        grid = (h // 2, w // 2)
        pos = positive(cond)
        if guidance_scale <= 1.0:  # the pipeline's rule: true CFG only for true_cfg_scale > 1
            return unpack_latents(self._transformer(tokens, sigma, pos, grid).float(), h, w)
        neg = self.negative_branch(cond)
        both = {k: torch.cat([neg[k], pos[k]]) for k in pos}  # [2B, ...]: negative, then cond
        out = self._transformer(torch.cat([tokens, tokens]), torch.cat([sigma, sigma]), both, grid)
        v_neg, v_cond = out.float().chunk(2)  # [B, N, 4C] each
        combined = v_neg + guidance_scale * (v_cond - v_neg)
        # Rescaled per token to the conditional prediction's norm (over the packed channels).
        combined = combined * (
            v_cond.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True)
        )
        return unpack_latents(combined, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] to [0, 1] images [B, 3, 8h, 8w]: de-normalized with the VAE's
        ``latents_mean``/``latents_std`` as the pipeline does, decoded as one frame, float32."""
        vae = self.pipeline.vae
        z = vae.config.z_dim
        x = latents.to(device=next(vae.parameters()).device, dtype=torch.float32)[:, :, None]
        mean = torch.tensor(vae.config.latents_mean, device=x.device).view(1, z, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=x.device).view(1, z, 1, 1, 1)
        with torch.no_grad():
            images = vae.decode(x / inv_std + mean, return_dict=False)[0][:, :, 0]
        return (images.float() / 2 + 0.5).clamp(0, 1)
