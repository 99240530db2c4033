"""Wan2.1 / Wan2.2 text-to-video (``diffusers.WanPipeline``) as a Flow-DPPO policy.

    policy = WanPolicy.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", device="cuda",
                                       resolution=(480, 832), num_frames=33,
                                       negative_prompt=WAN_NEGATIVE_PROMPT)

Latents are the video VAE's [B, C, F', H/s, W/s] (5-D; Wan2.1: C = 16, F' = (F - 1)/4 + 1,
s = 8): the core's rollout and step maths take any rank. ``decode`` returns the frames
[B, F, 3, H, W] in [0, 1], the layout of ``WanPipeline(output_type="pt").frames``.
Conditioning: ``prompt_embeds`` [B, max_sequence_length, 4096] (UMT5-XXL), from the pipeline's own
``encode_prompt`` (text cleaned, padded with zeros after the prompt's tokens). The transformer
gets ``timestep = sigma · num_train_timesteps``; with ``expand_timesteps`` (Wan2.2 TI2V) one
timestep per latent token [B, F'·(H/s/2)·(W/s/2)], all equal, as the pipeline does for text-to-video.

Classifier-free guidance (``guidance_scale > 1``, the pipeline's rule): the unconditional branch is
``negative_prompt`` (``None`` or "": the empty prompt, which is what ``WanPipeline`` uses when given
no negative prompt; the Wan authors sample with ``WAN_NEGATIVE_PROMPT``), encoded once and kept
outside the prompt cache; a prompt given its own (``set_negative_prompts``) uses that instead.

Where this differs from ``WanPipeline.__call__`` (none of it changes the frames at float32 with
``FlowMatchEulerDiscreteScheduler``; the equivalence test compares them):
- no denoising loop here: ``flowdppo.core.rollout`` calls ``velocity`` once per step and does the
  step maths in float32 (the pipeline keeps its latents in float32 too);
- the two CFG branches run as one batch of 2B and combine in float32 (the pipeline: two passes,
  combined in the model dtype);
- the hub checkpoints ship ``UniPCMultistepScheduler`` (``flow_shift`` 3.0 for Wan2.1 at 480p):
  ``sigmas`` are its sigmas (shift included), but the rollout takes Euler / SDE steps on them, not
  UniPC's second-order multistep updates, and feeds the transformer ``sigma · 1000`` where UniPC
  rounds the timestep down to an integer; the videos then differ from the pipeline's at equal
  step counts (every flow-matching RL method samples this way: a step needs a Gaussian density);
- a pipeline with ``transformer_2`` (Wan2.2 A14B: two experts switched at ``boundary_ratio``) is
  refused: one trained transformer per policy;
- the height, width and frame count are checked (the pipeline rounds them down with a warning);
- the VAE decodes in float32, one video at a time, whatever the model dtype.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from flowdppo.models._diffusers_common import scheduler_sigmas
from flowdppo.models._diffusers_policy import DiffusersPolicy, positive
from flowdppo.models.base import Cond

# WanPipeline.__call__'s defaults: 480×832 pixels, 81 frames (5 s at 16 fps).
DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_NUM_FRAMES = 480, 832, 81
# The negative prompt of the diffusers Wan example (English rendering of the Wan authors' own).
WAN_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people in "
    "the background, walking backwards"
)


def video_size(resolution: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """``(height, width)`` from a side, a pair, or None (the pipeline's 480×832)."""
    if resolution is None:
        return DEFAULT_HEIGHT, DEFAULT_WIDTH
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        return resolution, resolution
    if isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        height, width = (int(v) for v in resolution)
        return height, width
    raise ValueError(f"resolution must be a side or (height, width), got {resolution!r}")


class WanPolicy(DiffusersPolicy):
    """Wan text-to-video policy; construct with ``WanPolicy.from_pretrained`` (options of
    ``DiffusersPolicy.from_pretrained``, plus ``num_frames`` and ``negative_prompt``)."""

    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    default_max_sequence_length: ClassVar[int] = 512  # WanPipeline.__call__'s default
    # Self- and cross-attention projections of every block (Wan has no context-stream layers).
    default_lora_targets: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(
        self,
        pipeline: Any,
        *,
        resolution: int | tuple[int, int] | None,
        num_frames: int | None = None,
        negative_prompt: str | None = None,
        **kwargs: Any,
    ) -> None:
        if getattr(pipeline, "transformer_2", None) is not None or pipeline.transformer is None:
            raise ValueError(
                "WanPolicy: this WanPipeline has a second transformer (transformer_2, Wan2.2 A14B "
                "with boundary_ratio); one trained transformer per policy is supported: use a "
                "Wan2.1 or Wan2.2-TI2V-5B checkpoint"
            )
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(
                f"negative_prompt must be a string, got {type(negative_prompt).__name__}"
            )
        self.num_frames = DEFAULT_NUM_FRAMES if num_frames is None else int(num_frames)
        self.negative_prompt = negative_prompt or ""
        super().__init__(pipeline, resolution=video_size(resolution), **kwargs)

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import WanPipeline

        return WanPipeline

    def _check_shapes(self) -> tuple[int, int, int, int]:
        pipe = self.pipeline
        temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        patch_t, patch_h, patch_w = pipe.transformer.config.patch_size
        frames = self.num_frames
        if frames < 1 or (frames - 1) % temporal:
            below = max(frames - 1, 0) // temporal * temporal + 1
            raise ValueError(
                f"num_frames {frames} must be {temporal}k + 1 (the VAE compresses time "
                f"{temporal}x after the first frame), e.g. {below} or {below + temporal}"
            )
        latent_frames = (frames - 1) // temporal + 1
        if latent_frames % patch_t:
            raise ValueError(
                f"num_frames {frames} gives {latent_frames} latent frames, not a multiple of the "
                f"temporal patch size {patch_t}"
            )
        for name, side, patch in (("height", self.height, patch_h), ("width", self.width, patch_w)):
            if side < 1 or side % (spatial * patch):
                raise ValueError(
                    f"{name} {side} must be a positive multiple of {spatial * patch} "
                    f"(VAE scale {spatial} × patch size {patch})"
                )
        channels = pipe.transformer.config.in_channels
        return (channels, latent_frames, self.height // spatial, self.width // spatial)

    def _encode_uncached(self, prompts: list[str]) -> Cond:
        embeds, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        return {"prompt_embeds": embeds.to(self.dtype)}

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """The pipeline scheduler's sigmas with its own shift, float32 [T + 1] from 1 to 0."""
        return scheduler_sigmas(self.pipeline.scheduler, num_inference_steps)

    def _transformer(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        timestep = sigma * self.pipeline.scheduler.config.num_train_timesteps  # [B], float32
        if self.pipeline.config.get("expand_timesteps", False):
            _, patch_h, patch_w = self.transformer.config.patch_size
            _, _, frames, h, w = latents.shape
            tokens = frames * -(-h // patch_h) * -(-w // patch_w)
            timestep = timestep[:, None].expand(-1, tokens)  # [B, tokens]: one per latent token
        return self.transformer(
            hidden_states=latents.to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"],
            return_dict=False,
        )[0]

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        pos = positive(cond)
        if guidance_scale <= 1.0:  # the pipeline's rule: CFG only for guidance_scale > 1
            return self._transformer(latents, sigma, pos).float()
        uncond = self.negative_branch(cond)  # the prompts' negatives, or ``negative_prompt``'s
        both = {k: torch.cat([uncond[k], pos[k]]) for k in pos}  # [2B, ...]: uncond, then cond
        out = self._transformer(torch.cat([latents, latents]), torch.cat([sigma, sigma]), both)
        v_uncond, v_cond = out.float().chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, F', h, w] to frames [B, F, 3, H, W], float32 in [0, 1] (VAE in float32,
        no grad, one video at a time to bound the decoder's memory)."""
        vae = self.pipeline.vae
        device = next(vae.parameters()).device
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(shape)
        # The pipeline multiplies by std as a division by 1/std; so do we (same rounding).
        inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device)
        videos = []
        with torch.no_grad():
            for one in latents.to(device=device, dtype=torch.float32).split(1):
                x = one / inv_std.view(shape) + mean
                videos.append(vae.decode(x, return_dict=False)[0].float())  # [1, 3, F, H, W]
        video = torch.cat(videos)
        return (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W]
