"""The policy interface: what the trainer needs from a generator, and nothing more.

A policy wraps one text-to-image flow-matching model (our Shapes model, a diffusers SD3/FLUX
pipeline, ...). The rollout loop and the step maths live in ``flowdppo.core``; an adapter only
answers these questions. Conventions (docs/algorithm.md §1): ``latents`` at noise level ``sigma``
satisfy ``x_sigma = (1 - sigma) * x0 + sigma * eps`` and the model predicts ``v = eps - x0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

# Prompt conditioning: a dict of tensors that all share the leading batch dimension. Adapters put
# whatever they need in it (token embeddings, pooled embeddings, masks).
Cond = dict[str, torch.Tensor]


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of ``module`` that require grad, by name, detached (LoRA weights after
    ``add_lora``, which freezes the rest; every unfrozen weight for full fine-tuning)."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def load_parameters(
    params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor], who: str
) -> None:
    """Copy ``state`` into ``params``: keys and shapes must match exactly (errors name ``who``)."""
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"{who}: key mismatch; missing {missing[:5]} ({len(missing)} total), "
            f"unexpected {unexpected[:5]} ({len(unexpected)} total); a run whose config.yaml "
            "has model.lora_target_modules: null was trained with the defaults of its version "
            "(before to_add_out joined them: to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, "
            "add_v_proj): set model.lora_target_modules to the targets it used"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = state[name]
            if value.shape != param.shape:
                raise ValueError(
                    f"{who}: {name} has shape {tuple(value.shape)}, the module expects {tuple(param.shape)}"
                )
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def load_trainable_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of ``trainable_state_dict``."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    load_parameters(params, state, "load_trainable_state_dict")


@runtime_checkable
class Policy(Protocol):
    """A trainable flow-matching text-to-image generator."""

    @property
    def device(self) -> torch.device: ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latents, without the batch dimension (e.g. ``(3, 32, 32)``)."""
        ...

    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Encode prompts to conditioning (no gradient; adapters may cache per prompt)."""
        ...

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """Predict ``v`` for ``latents`` [B, *latent_shape] at ``sigma`` [B]; returns float32.

        ``guidance_scale > 1`` applies classifier-free guidance (the adapter owns the
        unconditional branch); 1.0 is a single conditional pass.
        """
        ...

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        """The model's sigma schedule: float32 [num_inference_steps + 1], from ~1 down to 0."""
        ...

    def initial_noise(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Standard-normal starting latents [B, *latent_shape] (float32, on ``generator``'s device)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, *latent_shape] to images [B, 3, H, W], float32 in [0, 1] (a video
        policy: frames [B, F, 3, H, W])."""
        ...

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters the optimizer updates (LoRA weights, or all for full fine-tuning)."""
        ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights by parameter name (detached): what checkpoints store."""
        ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by ``trainable_state_dict`` (keys must match exactly)."""
        ...

    def reference(self) -> AbstractContextManager[None]:
        """Context in which ``velocity`` is the frozen reference (base) model.

        LoRA: the adapter disabled (no second copy). Full fine-tuning: a frozen copy.
        """
        ...

    def compile(self) -> None:
        """``torch.compile`` the denoising network(s) in place (``nn.Module.compile``): the
        parameters, their names and the checkpoints stay as they are."""
        ...

    def reduced_precision(self) -> AbstractContextManager[None]:
        """Context in which ``velocity`` may trade precision for speed, for rollout steps whose
        log-prob is never taken (``sampling.untrained_precision``). A policy with
        nothing to trade makes it a no-op."""
        ...
