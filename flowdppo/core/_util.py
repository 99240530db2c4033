"""Small shared helpers of the core: argument validation, batch broadcasting, reductions.

Private to ``flowdppo.core``; every public function validates its arguments with these so that
errors name the offending argument and quote its value (STYLE.md: "errors say exactly what was
wrong").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum")


def check_reduction(reduction: str, arg: str = "reduction") -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``REDUCTIONS``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{arg} must be one of {list(REDUCTIONS)}, got {reduction!r}")


def check_choice(value: str, choices: tuple[str, ...] | list[str], arg: str) -> None:
    """Raise ``ValueError`` unless ``value`` is in ``choices``."""
    if value not in choices:
        raise ValueError(f"{arg} must be one of {sorted(choices)}, got {value!r}")


def check_positive(value: float, arg: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{arg} must be a finite number > 0, got {value!r}")


def reduce_over_sample(t: Tensor, reduction: str) -> Tensor:
    """Sum or mean of ``t`` [B, ...] over every non-batch dimension -> [B]."""
    check_reduction(reduction)
    flat = t.reshape(t.shape[0], -1)  # [B, D]
    return flat.mean(dim=1) if reduction == "mean" else flat.sum(dim=1)


def per_sample(value: float | Tensor, batch_size: int, device: torch.device, arg: str) -> Tensor:
    """A python float, 0-d tensor or [B] tensor as a float32 tensor [B] on ``device``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        return t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(
            f"{arg} must be a float or a tensor of shape [{batch_size}] (one per sample), "
            f"got shape {list(t.shape)}"
        )
    return t


def expand_like(t: Tensor, like: Tensor) -> Tensor:
    """View a per-sample tensor [B] as [B, 1, ..., 1] with ``like.ndim`` dimensions."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))  # [B] -> [B, 1, ..., 1]
