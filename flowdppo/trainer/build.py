"""Build the pieces of a run from its config: the policy (by model family) and the rewards."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from flowdppo.config.schema import ModelConfig, RunConfig
from flowdppo.rewards.compute import LoadedReward, RewardSpec, build_rewards


def _dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def _shapes(cfg: ModelConfig, device: torch.device, shift: float | None) -> Any:
    from flowdppo.models.shapes import ShapesPolicy

    for key in ("init_lora",):
        if getattr(cfg, key) is not None:
            raise ValueError(
                f"model.{key}: {getattr(cfg, key)!r} is an option of the diffusers families; "
                "the shapes family has none (set it to null)"
            )

    return ShapesPolicy.from_pretrained(
        cfg.pretrained,
        shift=shift,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_target_modules=cfg.lora_target_modules,
        full_finetune=cfg.full_finetune,
        device=device,
    )


# The diffusers families' policy classes ("module:Class"), imported only when used.
DIFFUSERS_POLICIES = {
    "sd3": "flowdppo.models.sd3:SD3Policy",
    "flux": "flowdppo.models.flux:FluxPolicy",
    "qwen_image": "flowdppo.models.qwen_image:QwenImagePolicy",
    "flux2_klein": "flowdppo.models.flux2_klein:Flux2KleinPolicy",
    "wan": "flowdppo.models.wan:WanPolicy",
}


def _diffusers(family: str) -> Callable[[ModelConfig, torch.device, float | None], Any]:
    def build(cfg: ModelConfig, device: torch.device, shift: float | None) -> Any:
        if cfg.pretrained is None:
            raise ValueError(
                f"model.pretrained: the {family} family needs a local folder or cached hub id"
            )
        module, name = DIFFUSERS_POLICIES[family].split(":")
        cls = getattr(importlib.import_module(module), name)
        if cfg.lora_target_modules is None and not cfg.full_finetune:
            # Resolved into the run's saved config: a later change of the default must not
            # change which adapters a resumed or exported run expects.
            cfg.lora_target_modules = list(cls.default_lora_targets)
        kwargs: dict[str, Any] = {
            "device": device,
            "dtype": _dtype(cfg, device),
            "lora_rank": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha,
            "lora_target_modules": cfg.lora_target_modules,
            "full_finetune": cfg.full_finetune,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "offload_text_encoders": cfg.offload_text_encoders,
            "prompt_cache_mb": cfg.prompt_cache_mb,
        }
        if cfg.resolution is not None:
            kwargs["resolution"] = cfg.resolution
        if cfg.max_sequence_length is not None:
            kwargs["max_sequence_length"] = cfg.max_sequence_length
        kwargs.update(_pipeline_options(cfg))
        if family == "wan":
            kwargs.update(_video_options(cfg))
        policy = cls.from_pretrained(cfg.pretrained, **kwargs)
        if cfg.init_lora is not None:
            from flowdppo.models.init_lora import init_lora

            init_lora(policy, cfg.init_lora)
        return policy

    return build


def _video_options(cfg: ModelConfig) -> dict[str, Any]:
    """The wan family's options: frames, the low-noise expert's guidance, and (height, width) over ``resolution``."""
    out: dict[str, Any] = {"num_frames": cfg.num_frames}
    if cfg.guidance_scale_2 is not None:
        out["guidance_scale_2"] = cfg.guidance_scale_2
    if cfg.height is not None and cfg.width is not None:
        out["resolution"] = (cfg.height, cfg.width)
    return out


def _pipeline_options(cfg: ModelConfig) -> dict[str, Any]:
    """The pipeline options of ``cfg`` that differ from their defaults, as ``from_pretrained``
    keywords: ``height``, ``width``, ``negative_prompt``, ``true_cfg_scale`` (FLUX.1)."""
    out: dict[str, Any] = {k: getattr(cfg, k) for k in ("height", "width") if getattr(cfg, k)}
    if cfg.negative_prompt is not None:  # validated: only families with a negative prompt
        out["negative_prompt"] = cfg.negative_prompt
    if cfg.true_cfg_scale != 1.0:
        out["true_cfg_scale"] = cfg.true_cfg_scale
    return out


POLICY_BUILDERS: dict[str, Callable[[ModelConfig, torch.device, float | None], Any]] = {
    "shapes": _shapes,
    **{family: _diffusers(family) for family in DIFFUSERS_POLICIES},
}


def build_policy(cfg: RunConfig, device: torch.device) -> Any:
    """The policy of ``cfg.model`` on ``device`` (its network compiled with ``model.compile``)."""
    policy = POLICY_BUILDERS[cfg.model.family](cfg.model, device, cfg.sampling.shift)
    if cfg.eval.skip_guidance_layers is not None:
        set_skip_layer_guidance(policy, cfg)
    if cfg.model.compile:
        check_compiler(device)
        policy.compile()
    return policy


def set_skip_layer_guidance(policy: Any, cfg: RunConfig) -> None:
    """Give the policy ``eval.skip_guidance_layers`` and its settings (SD3/SD3.5 only)."""
    setter = getattr(policy, "set_skip_layer_guidance", None)
    if setter is None:
        raise ValueError(
            f"eval.skip_guidance_layers: model.family {cfg.model.family} has no skip-layer "
            "guidance (SD3/SD3.5 only); set it to null"
        )
    from flowdppo.models.sd3 import SkipLayerGuidance

    e = cfg.eval
    setter(
        SkipLayerGuidance(
            layers=tuple(e.skip_guidance_layers or ()),
            scale=e.skip_layer_guidance_scale,
            start=e.skip_layer_guidance_start,
            stop=e.skip_layer_guidance_stop,
        )
    )


def check_compiler(device: torch.device) -> None:
    """Compile and run a one-line function on ``device``, so that a machine where
    ``torch.compile`` cannot work (on a CPU: no C++ compiler) fails here, with the setting
    named, and not at the first forward of the first rollout."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2, device=device))
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(
            f"model.compile: torch.compile does not work on this machine ({device.type}: "
            f"{type(err).__name__}: {first}); on a CPU it needs a C++ compiler (g++ or clang++ "
            "on PATH, or CXX). Install one, or set model.compile=false."
        ) from err


def build_run_rewards(cfg: RunConfig) -> list[LoadedReward]:
    """The run's rewards, in config order."""
    return build_rewards([RewardSpec(r.name, r.weight, dict(r.kwargs)) for r in cfg.rewards])


def resolve_untrained_precision(cfg: RunConfig, device: torch.device) -> str:
    """Replace ``sampling.untrained_precision: auto`` in ``cfg`` by what it picks on ``device``
    (``full`` or ``reduced``, ``experience.use_reduced_precision``), so the run's saved config
    names the precision its rollouts used and a resume on another machine keeps it. Returns the
    line to print at start, or '' when the config already named a precision."""
    from flowdppo.trainer.experience import use_reduced_precision

    s = cfg.sampling
    if s.untrained_precision != "auto":
        return ""
    s.untrained_precision = "reduced" if use_reduced_precision(s, device) else "full"
    why = "bfloat16 kernels" if s.untrained_precision == "reduced" else "no bfloat16 kernels"
    return (
        f"sampling.untrained_precision: auto -> {s.untrained_precision} ({why} on {device.type}; "
        "saved in config.yaml; set it to full or reduced for the same rollouts on every machine)"
    )
