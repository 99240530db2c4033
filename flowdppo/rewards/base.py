"""The reward interface and its registry.

A reward scores a batch of final images given their prompts and per-prompt metadata; it returns
one float per image (higher is better), optionally with named per-image details (e.g. atoms).
Rewards are chosen by name in the config (``rewards: [{name: shapes_tifa, weight: 1.0}]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class RewardOutput:
    """Scores [B] float32 on CPU, and optional named per-image details (each [B] or [B, ...])."""

    scores: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Reward(Protocol):
    """A batch reward: images [B, 3, H, W] float32 in [0, 1] (any device) → ``RewardOutput``."""

    name: str
    batch_size: int  # the largest batch the reward takes at once (callers chunk)
    device: torch.device  # where the reward computes

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput: ...


RewardFactory = Callable[..., Reward]
_REGISTRY: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator: register a reward factory (class or function) under ``name``."""

    def deco(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_rewards() -> list[str]:
    """Names of all registered rewards."""
    _import_builtin_rewards()
    return sorted(_REGISTRY)


def build_reward(name: str, **kwargs: Any) -> Reward:
    """Instantiate the reward registered as ``name`` with its keyword options."""
    _import_builtin_rewards()
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def _import_builtin_rewards() -> None:
    # Importing the modules registers their rewards. Modules whose optional dependencies are not
    # installed still register: they raise a clear error when built.
    from flowdppo.rewards import builtin  # noqa: F401
