"""Sigma schedules of flow-matching samplers (docs/algorithm.md §1).

Convention: ``x_sigma = (1 - sigma) * x0 + sigma * eps``; sigma = 1 is pure noise, 0 is data. A
schedule is a float32 tensor [T + 1], strictly decreasing from ~1 to exactly 0, where step ``i``
goes from ``sigmas[i]`` to ``sigmas[i + 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def shifted_sigmas(num_inference_steps: int, shift: float = 3.0) -> Tensor:
    """The shifted linear schedule of SD3 (docs/algorithm.md §1).

    ``t_i = 1 - i / T`` and ``sigma_i = s * t_i / (1 + (s - 1) * t_i)`` for i = 0..T, so
    ``sigma_0 = 1`` and ``sigma_T = 0`` exactly. ``shift`` s = 1 is the plain linear schedule;
    s > 1 spends more steps at high noise (SD3 uses s = 3).

    Args:
        num_inference_steps: T >= 1.
        shift: s > 0.
    Returns:
        float32 tensor [T + 1] on the CPU.
    """
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    t = 1.0 - torch.arange(num_inference_steps + 1, dtype=torch.float64) / num_inference_steps
    sigmas = shift * t / (1.0 + (shift - 1.0) * t)
    return sigmas.to(torch.float32)


def model_sigmas(sigmas: Tensor | Sequence[float]) -> Tensor:
    """Validate a model scheduler's sigmas and return them as a float32 schedule [T + 1].

    Dynamic-shift models (FLUX, ...) compute their own sigmas; this checks them and appends the
    terminal 0 that diffusers schedulers sometimes leave out.

    Args:
        sigmas: 1-D, strictly decreasing, every value in [0, 1], at least one step.
    Returns:
        float32 tensor [T + 1] (same device as the input) ending with exactly 0.
    Raises:
        ValueError: naming the violated condition and the offending values.
    """
    s = torch.as_tensor(sigmas).detach().to(torch.float32)
    if s.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {list(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"sigmas must be finite, got {s.tolist()}")
    if (s < 0).any() or (s > 1).any():
        raise ValueError(f"sigmas must lie in [0, 1], got min {s.min():.6g}, max {s.max():.6g}")
    if s.numel() > 1 and not (s[1:] < s[:-1]).all():
        bad = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ValueError(
            f"sigmas must be strictly decreasing, but sigmas[{bad}]={float(s[bad]):.6g} <= "
            f"sigmas[{bad + 1}]={float(s[bad + 1]):.6g}"
        )
    if s.numel() == 0 or s[-1] != 0:
        s = torch.cat([s, s.new_zeros(1)])
    if s.numel() < 2:
        raise ValueError(f"sigmas must describe at least one step, got {s.tolist()}")
    return s
