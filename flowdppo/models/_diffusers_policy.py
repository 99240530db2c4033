"""The part of ``SD3Policy``/``FluxPolicy`` that is the same for every diffusers family.

A subclass names its ``pipeline_class`` and implements four things: ``_encode_uncached`` (prompts to
conditioning tensors, through the pipeline's own ``encode_prompt``), ``_velocity`` (one
transformer call in the model dtype), ``_check_shapes`` (the latent shape of ``height`` ×
``width``) and ``sigmas``. Everything else (loading, precision, LoRA/full fine-tuning, caching,
offload, decode, reference model, negative prompts) is here, so the family files stay small.

Negative prompts: the policy's ``negative_prompt`` (the family's default: the empty prompt, " "
for Qwen-Image) is encoded once and held apart (``unconditional``); a prompt given another
(``set_negative_prompts``) gets that negative's rows in its conditioning, under
``negative_``-prefixed keys, through the same cache. ``negative_branch(cond)`` is the
conditioning of CFG's negative branch, ``positive(cond)`` the prompt's own; a family whose
guidance has no negative branch says so with ``uses_negative_prompts``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch

from flowdppo.models._diffusers_common import (
    DEFAULT_LORA_TARGETS,
    DEFAULT_PROMPT_CACHE_MB,
    MIB,
    PROMPT_CACHE_DEVICES,
    PromptCache,
    autocast_context,
    decode_latents,
    encoders_on,
    freeze,
    load_pipeline,
    move,
    prepare_transformer,
    reference_context,
    resolve_dtype,
)
from flowdppo.models.base import Cond, load_trainable_state_dict, trainable_state_dict


class DiffusersPolicy:
    """Shared implementation of the ``Policy`` protocol over a diffusers pipeline.

    The pipeline's modules are owned by the policy after construction (LoRA is injected into
    ``pipeline.transformer`` in place), so ``policy.pipeline`` can still be called for
    evaluation with the trained weights.
    """

    text_encoder_names: ClassVar[tuple[str, ...]]
    default_max_sequence_length: ClassVar[int]
    negative_prompt: str = ""  # the family's default negative prompt (``from_pretrained``)
    default_lora_targets: ClassVar[list[str]] = DEFAULT_LORA_TARGETS  # lora_target_modules=None

    @classmethod
    def from_pretrained(
        cls,
        path_or_pipeline: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        lora_rank: int = 32,
        lora_alpha: float = 64,
        lora_target_modules: list[str] | None = None,
        full_finetune: bool = False,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        resolution: int | None = None,
        max_sequence_length: int | None = None,
        prompt_cache_mb: float = DEFAULT_PROMPT_CACHE_MB,
        prompt_cache_device: str = "device",
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | None = None,
        **options: Any,
    ):
        """Build the policy from a pipeline object, a pipeline folder or a cached hub id.

        ``dtype`` None or "auto": bf16 (fp16 if unsupported) on GPU, float32 on CPU (also a
        torch dtype or "float32"/"bfloat16"/"float16"); the VAE always runs in float32. ``lora_target_modules`` None: the attention projections. ``full_finetune``
        trains every transformer weight (float32 master weights, autocast to ``dtype``) and keeps
        a frozen copy as reference. ``offload_text_encoders`` keeps the text encoders on the CPU
        except while encoding new prompts. ``resolution`` None: the pipeline's default size;
        ``height`` / ``width`` (pixels) override it for non-square images.
        ``negative_prompt``: the negative branch of CFG for every prompt without its own
        (``set_negative_prompts``); None: the family's default (class attribute
        ``negative_prompt``; "" is the empty prompt).
        ``prompt_cache_mb``: budget of the prompt-embedding cache in MiB (least recently used
        prompts evicted first; 0: no cache), held on ``prompt_cache_device`` ("device": the
        policy's device; "cpu": copied to the device on use). ``options``: the family's own
        constructor options (FLUX.1: ``true_cfg_scale``; Wan: ``num_frames``).
        """
        device = torch.device(device)
        dtype = resolve_dtype(device, dtype)
        # The cache options are checked before the (slow) pipeline load.
        cache = _prompt_cache(prompt_cache_mb, prompt_cache_device, device)
        pipeline = load_pipeline(cls.pipeline_class(), path_or_pipeline, dtype)
        return cls(
            pipeline,
            device=device,
            dtype=dtype,
            resolution=resolution,
            max_sequence_length=max_sequence_length or cls.default_max_sequence_length,
            offload_text_encoders=offload_text_encoders,
            prompt_cache=cache,
            size=(height, width),
            negative_prompt=negative_prompt,
            train_options={
                "lora_rank": lora_rank,
                "lora_alpha": lora_alpha,
                "lora_target_modules": lora_target_modules or list(cls.default_lora_targets),
                "full_finetune": full_finetune,
                "gradient_checkpointing": gradient_checkpointing,
            },
            **options,
        )

    def __init__(
        self,
        pipeline: Any,
        *,
        device: torch.device,
        dtype: torch.dtype,
        resolution: int | tuple[int, int] | None,
        max_sequence_length: int,
        offload_text_encoders: bool,
        train_options: dict[str, Any],
        prompt_cache: PromptCache | None = None,
        size: tuple[int | None, int | None] = (None, None),
        negative_prompt: str | None = None,
        **family_options: Any,
    ) -> None:
        self.pipeline = pipeline
        self._device = device
        self.dtype = dtype
        self.full_finetune = bool(train_options["full_finetune"])
        self.offload_text_encoders = offload_text_encoders
        self.max_sequence_length = max_sequence_length
        self.resolution = resolution or pipeline.default_sample_size * pipeline.vae_scale_factor
        # ``resolution`` is a side, or (height, width) for a family that takes a pair (Wan).
        sides = self.resolution if isinstance(self.resolution, tuple) else (self.resolution,) * 2
        self.height, self.width = (
            d if n is None else int(n) for n, d in zip(size, sides, strict=True)
        )
        self._set_family_options(**family_options)
        self._latent_shape = self._check_shapes()
        if negative_prompt is not None:
            if not isinstance(negative_prompt, str):
                raise TypeError(
                    f"negative_prompt must be a string, got {type(negative_prompt).__name__}"
                )
            self.negative_prompt = negative_prompt
        self._negatives: dict[str, str] = {}  # prompt -> its own negative prompt
        encoders = [getattr(pipeline, n, None) for n in self.text_encoder_names]
        freeze(pipeline.vae, *encoders)
        move(pipeline.vae, device, torch.float32)
        for encoder in encoders:
            if encoder is not None:
                move(encoder, torch.device("cpu") if offload_text_encoders else device, dtype)
        self.transformer = move(pipeline.transformer, device, dtype).eval()
        self._reference = prepare_transformer(self.transformer, **train_options)
        if prompt_cache is None:
            prompt_cache = _prompt_cache(DEFAULT_PROMPT_CACHE_MB, "device", device)
        self._cache = prompt_cache
        self._unconditional: Cond | None = None  # the empty prompt (CFG), outside the budget

    @classmethod
    def pipeline_class(cls) -> type:
        """The diffusers pipeline class (imported lazily: diffusers is an optional extra)."""
        raise NotImplementedError

    def _check_shapes(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _set_family_options(self, **options: Any) -> None:
        """Take the family's own ``from_pretrained`` options (none here: any is an error)."""
        if options:
            raise TypeError(
                f"{type(self).__name__}: unknown options {sorted(options)} "
                "(FLUX.1 takes true_cfg_scale; Wan num_frames)"
            )

    def _check_multiple(self, multiple: int, why: str) -> None:
        """``height`` and ``width`` must be multiples of ``multiple`` (``why``: its factors)."""
        for name, side in (("height", self.height), ("width", self.width)):
            if side < multiple or side % multiple:
                raise ValueError(
                    f"{name} {side} (pixels) must be a positive multiple of {multiple} ({why})"
                )

    def uses_negative_prompts(self) -> bool:
        """Whether the guidance has a negative branch a prompt can set (SD3, Qwen-Image: yes;
        FLUX.1: with true CFG; FLUX.2-klein: no, its negative is fixed)."""
        return True

    def _encode_uncached(self, prompts: list[str]) -> Cond:
        raise NotImplementedError

    def _velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        raise NotImplementedError

    # --- the Policy protocol -------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self._latent_shape

    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Conditioning for ``prompts`` (model dtype, on ``device``), through the LRU cache;
        with the rows of their negative prompts (``negative_*`` keys) when some is not empty."""
        prompts = list(prompts) if not isinstance(prompts, str) else prompts
        cond = self._cache.get(prompts, self._encode)
        if not self.uses_negative_prompts():
            return cond
        negatives = [self.negative_prompt_for(p) for p in prompts]
        if all(n == self.negative_prompt for n in negatives):  # held apart: ``unconditional``
            return cond
        rows = self._cache.get(negatives, self._encode)
        return {**cond, **{NEGATIVE + k: v for k, v in rows.items()}}

    def set_negative_prompts(self, negatives: Mapping[str, str]) -> None:
        """Give prompts their own negative prompt (prompt -> negative; "" the empty prompt),
        in place of ``negative_prompt``. A prompt given two different negatives is an error."""
        if not self.uses_negative_prompts():
            raise ValueError(
                f"{type(self).__name__} has no negative prompts to set (its guidance has no "
                "negative branch; FLUX.1: set model.true_cfg_scale > 1)"
            )
        for prompt, negative in negatives.items():
            if not isinstance(negative, str):
                raise TypeError(f"negative prompt of {prompt!r} must be a string, got {negative!r}")
            held = self._negatives.get(prompt)
            if held is not None and held != negative:
                raise ValueError(
                    f"prompt {prompt!r} has two negative prompts, {held!r} and {negative!r} "
                    "(the training and evaluation prompt files disagree)"
                )
        self._negatives.update(negatives)

    def negative_prompt_for(self, prompt: str) -> str:
        """The negative prompt of ``prompt``: its own, else ``negative_prompt``."""
        return self._negatives.get(prompt, self.negative_prompt)

    def negative_branch(self, cond: Cond) -> Cond:
        """The conditioning of CFG's negative branch for ``cond``'s batch: its ``negative_*``
        rows without the prefix, or the empty prompt's (``unconditional``) broadcast."""
        rows = {k[len(NEGATIVE) :]: v for k, v in cond.items() if k.startswith(NEGATIVE)}
        if rows:
            return rows
        batch = next(iter(cond.values())).shape[0]
        return {k: v.expand(batch, *v.shape[1:]) for k, v in self.unconditional().items()}

    def _encode(self, prompts: list[str]) -> Cond:
        """The text encoders on ``prompts`` (moved to the device meanwhile if offloaded)."""
        encoders = [getattr(self.pipeline, n, None) for n in self.text_encoder_names]
        with torch.no_grad(), encoders_on(self.device, self.offload_text_encoders, *encoders):
            return self._encode_uncached(prompts)

    def unconditional(self) -> Cond:
        """The conditioning [1, ...] on ``device`` of ``negative_prompt`` (by default the empty
        prompt), the negative branch of guidance for every prompt without its own: encoded once
        and held outside the cache's budget (every guided step reads it, so it is neither
        evicted nor counted as a lookup)."""
        if self._unconditional is None:
            self._unconditional = self._encode([self.negative_prompt])
        return self._unconditional

    def cache_stats(self) -> dict[str, int]:
        """The prompt cache's counters (``PromptCache.stats``): hits, misses, evictions since
        construction; entries, bytes held and the budget ``max_bytes`` now. The trainer turns
        two snapshots into ``cache/*`` metrics with ``prompt_cache_metrics``."""
        return self._cache.stats()

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """``v`` for ``latents`` [B, *latent_shape] at ``sigma`` [B]; float32 [B, *latent_shape]."""
        sigma = self._checked_sigma(latents, sigma, cond)
        with autocast_context(self.device, self.dtype, self.full_finetune):
            v = self._velocity(latents.to(self.device), sigma, cond, guidance_scale)
        return v.float()

    def _checked_sigma(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond
    ) -> torch.Tensor:
        """``sigma`` as float32 [B] on the device, after checking the shapes of the query."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"latents have shape {tuple(latents.shape)}; this policy expects "
                f"[B, {', '.join(map(str, self.latent_shape))}] "
                f"(height {self.height}, width {self.width})"
            )
        batch = latents.shape[0]
        sigma = torch.as_tensor(sigma, device=self.device, dtype=torch.float32).reshape(-1)
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        if sigma.shape != (batch,) or any(v.shape[0] != batch for v in cond.values()):
            raise ValueError(
                f"batch mismatch: latents {batch}, sigma {tuple(sigma.shape)}, "
                f"cond {[tuple(v.shape) for v in cond.values()]}"
            )
        return sigma

    def initial_noise(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Standard-normal latents [B, *latent_shape], float32, on the generator's device."""
        shape = (batch_size, *self.latent_shape)
        return torch.randn(shape, generator=generator, device=generator.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to [0, 1] images [B, 3, height, width] (VAE in float32, no grad)."""
        return decode_latents(self.pipeline.vae, latents)

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """LoRA weights (float32), or every transformer weight for full fine-tuning."""
        return (p for p in self.transformer.parameters() if p.requires_grad)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable transformer weights by parameter name, detached: LoRA keys
        (``...lora_A.default.weight``, see ``flowdppo.models.lora``) or every transformer weight
        for full fine-tuning (all else is frozen)."""
        return trainable_state_dict(self.transformer)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by ``trainable_state_dict`` (keys and shapes must match exactly)."""
        load_trainable_state_dict(self.transformer, state)

    def reference(self) -> AbstractContextManager[None]:
        """The base model: LoRA disabled, or the frozen pre-training copy (full fine-tuning)."""
        return reference_context(self)

    def compile(self) -> None:
        for net in [self.transformer] + ([self._reference] if self._reference is not None else []):
            net.compile()

    def reduced_precision(self) -> AbstractContextManager[None]:
        """No-op: the transformer already runs in its ``model.dtype`` (bfloat16 on GPUs)."""
        return nullcontext()

    @property
    def num_cached_prompts(self) -> int:
        return len(self._cache)


NEGATIVE = "negative_"  # prefix of a negative prompt's rows in ``Cond``


def positive(cond: Cond) -> Cond:
    """``cond`` without its negative prompts' rows."""
    return {k: v for k, v in cond.items() if not k.startswith(NEGATIVE)}


def _prompt_cache(mb: float, where: str, device: torch.device) -> PromptCache:
    """The prompt cache for ``model.prompt_cache_mb`` MiB kept on ``where`` ("device" | "cpu")."""
    if not (math.isfinite(mb) and mb >= 0):
        raise ValueError(
            f"prompt_cache_mb must be a finite number of MiB >= 0 (0: no cache), got {mb!r}"
        )
    if where not in PROMPT_CACHE_DEVICES:
        raise ValueError(
            f"prompt_cache_device must be one of {list(PROMPT_CACHE_DEVICES)}, got {where!r}"
        )
    store = torch.device("cpu") if where == "cpu" else device
    return PromptCache(int(mb * MIB), device, store)
