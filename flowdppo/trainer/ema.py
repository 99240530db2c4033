"""Exponential moving average of the trainable weights: ``ema ← d·ema + (1-d)·θ`` after each step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class EMA:
    """EMA of a policy's trainable weights (by name), with a context that swaps them in."""

    def __init__(self, policy: Any, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.policy, self.decay = policy, decay
        self.shadow = {
            k: v.detach().clone().float() for k, v in policy.trainable_state_dict().items()
        }

    @torch.no_grad()
    def update(self) -> None:
        for k, v in self.policy.trainable_state_dict().items():
            self.shadow[k].lerp_(v.float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise KeyError("EMA state keys do not match the policy's trainable weights")
        self.shadow = {k: v.clone().float() for k, v in state.items()}

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Run with the EMA weights in the policy; the live weights are restored on exit."""
        live = {k: v.clone() for k, v in self.policy.trainable_state_dict().items()}
        self.policy.load_trainable_state_dict(self.shadow)
        try:
            yield
        finally:
            self.policy.load_trainable_state_dict(live)
