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

Two experts (Wan2.2-T2V-A14B: ``transformer_2`` and ``boundary_ratio`` in the pipeline): a step
whose timestep ``sigma · num_train_timesteps`` is ``>= boundary_ratio · num_train_timesteps`` runs
the high-noise ``transformer`` with ``guidance_scale``, one below it the low-noise
``transformer_2`` with ``guidance_scale_2`` (None: ``guidance_scale``), the pipeline's rule; each
row of a batch picks its own expert. Both experts get a LoRA (full fine-tuning is refused: two
frozen 14B copies); ``trainable_state_dict`` holds the high-noise expert's keys as they are and the
low-noise expert's under ``transformer_2.``; the reference disables both LoRAs.

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
- two experts: the expert is chosen on ``sigma · 1000`` too, where UniPC compares its rounded
  integer timestep with the boundary (the two can fall on either side when within 1 of it);
- the height, width and frame count are checked (the pipeline rounds them down with a warning);
- the VAE decodes in float32, one video at a time, whatever the model dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, ClassVar

import torch

from flowdppo.models._diffusers_common import move, prepare_transformer, scheduler_sigmas
from flowdppo.models._diffusers_policy import DiffusersPolicy, positive
from flowdppo.models.base import Cond, load_trainable_state_dict, trainable_state_dict
from flowdppo.models.export import LOW_NOISE  # the low-noise expert's key prefix
from flowdppo.models.lora import disabled_lora

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
        guidance_scale_2: float | None = None,
        **kwargs: Any,
    ) -> None:
        if pipeline.transformer is None:
            raise ValueError("WanPolicy: this WanPipeline has no transformer (high-noise expert)")
        two = getattr(pipeline, "transformer_2", None) is not None
        if two and pipeline.config.get("boundary_ratio") is None:
            raise ValueError(
                "WanPolicy: this WanPipeline has transformer_2 but boundary_ratio is None (the "
                "pipeline would never use it); set boundary_ratio (Wan2.2-T2V-A14B: 0.875)"
            )
        if guidance_scale_2 is not None and not two:
            raise ValueError(
                f"guidance_scale_2 {guidance_scale_2} needs a two-expert pipeline "
                "(transformer_2 and boundary_ratio, Wan2.2 A14B); this one has one transformer"
            )
        train_options = kwargs["train_options"]
        if two and train_options["full_finetune"]:
            raise ValueError(
                "WanPolicy: full fine-tuning of a two-expert pipeline (Wan2.2 A14B) is not "
                "supported; train a LoRA (model.full_finetune: false)"
            )
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(
                f"negative_prompt must be a string, got {type(negative_prompt).__name__}"
            )
        self.num_frames = DEFAULT_NUM_FRAMES if num_frames is None else int(num_frames)
        self.negative_prompt = negative_prompt or ""
        self.guidance_scale_2 = None if guidance_scale_2 is None else float(guidance_scale_2)
        super().__init__(pipeline, resolution=video_size(resolution), **kwargs)
        self.transformer_2: torch.nn.Module | None = None
        if two:
            self.transformer_2 = move(pipeline.transformer_2, self.device, self.dtype).eval()
            prepare_transformer(self.transformer_2, **train_options)

    def experts(self) -> list[torch.nn.Module]:
        """The trained transformers: [high-noise] or [high-noise, low-noise]."""
        return [self.transformer] + ([self.transformer_2] if self.transformer_2 is not None else [])

    def boundary_timestep(self) -> float | None:
        """``boundary_ratio · num_train_timesteps`` (two experts), else None."""
        if self.transformer_2 is None:
            return None
        ratio = self.pipeline.config.boundary_ratio
        return ratio * self.pipeline.scheduler.config.num_train_timesteps

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

    def _transformer(
        self, net: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, cond: Cond
    ) -> torch.Tensor:
        if self.pipeline.config.get("expand_timesteps", False):
            _, patch_h, patch_w = net.config.patch_size
            _, _, frames, h, w = latents.shape
            tokens = frames * -(-h // patch_h) * -(-w // patch_w)
            timestep = timestep[:, None].expand(-1, tokens)  # [B, tokens]: one per latent token
        return net(
            hidden_states=latents.to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"],
            return_dict=False,
        )[0]

    def _guided(
        self,
        net: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Cond,
        scale: float | None,
    ) -> torch.Tensor:
        """One expert's velocity, float32; ``scale`` None: no CFG."""
        pos = positive(cond)
        if scale is None:
            return self._transformer(net, latents, timestep, pos).float()
        uncond = self.negative_branch(cond)  # the prompts' negatives, or ``negative_prompt``'s
        both = {k: torch.cat([uncond[k], pos[k]]) for k in pos}  # [2B, ...]: uncond, then cond
        out = self._transformer(
            net, torch.cat([latents, latents]), torch.cat([timestep, timestep]), both
        )
        v_uncond, v_cond = out.float().chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        timestep = sigma * self.pipeline.scheduler.config.num_train_timesteps  # [B], float32
        # The pipeline's rule: CFG (both stages) only for guidance_scale > 1.
        cfg = guidance_scale > 1.0
        boundary = self.boundary_timestep()
        if boundary is None or self.transformer_2 is None:
            return self._guided(
                self.transformer, latents, timestep, cond, guidance_scale if cfg else None
            )
        low_scale = guidance_scale if self.guidance_scale_2 is None else self.guidance_scale_2
        high = timestep >= boundary  # [B]: rows of the high-noise expert
        stages = ((high, self.transformer, guidance_scale), (~high, self.transformer_2, low_scale))
        v = torch.empty(latents.shape, dtype=torch.float32, device=latents.device)
        for rows, net, scale in stages:
            if rows.all():
                return self._guided(net, latents, timestep, cond, scale if cfg else None)
            if rows.any():
                part = {k: c[rows] for k, c in cond.items()}
                v[rows] = self._guided(
                    net, latents[rows], timestep[rows], part, scale if cfg else None
                )
        return v

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

    # --- both experts' weights ----------------------------------------------------------------

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The LoRA weights (float32) of every expert."""
        return (p for net in self.experts() for p in net.parameters() if p.requires_grad)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The high-noise expert's LoRA keys as they are; the low-noise expert's under
        ``transformer_2.`` (no parameter of a Wan transformer is named so: keys never collide)."""
        state = trainable_state_dict(self.transformer)
        if self.transformer_2 is not None:
            low = trainable_state_dict(self.transformer_2)
            state.update({LOW_NOISE + k: v for k, v in low.items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by ``trainable_state_dict`` (keys and shapes must match exactly)."""
        load_trainable_state_dict(
            self.transformer, {k: v for k, v in state.items() if not k.startswith(LOW_NOISE)}
        )
        low = {k[len(LOW_NOISE) :]: v for k, v in state.items() if k.startswith(LOW_NOISE)}
        if self.transformer_2 is not None:
            load_trainable_state_dict(self.transformer_2, low)
        elif low:
            raise ValueError(
                f"load_trainable_state_dict: {len(low)} weights of transformer_2 (a two-expert "
                "Wan2.2 A14B run) for a policy with one transformer"
            )

    def reference(self) -> AbstractContextManager[None]:
        """The base model: every expert's LoRA disabled."""
        if self.transformer_2 is None:
            return super().reference()
        return _all_disabled(self.experts())

    def compile(self) -> None:
        super().compile()  # the high-noise expert (and a full fine-tune's frozen copy)
        if self.transformer_2 is not None:
            self.transformer_2.compile()


@contextmanager
def _all_disabled(nets: list[torch.nn.Module]) -> Iterator[None]:
    with ExitStack() as stack:
        for net in nets:
            stack.enter_context(disabled_lora(net))
        yield
