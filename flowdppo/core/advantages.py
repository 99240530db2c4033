"""GRPO-style advantages, no critic (docs/algorithm.md §5).

Each prompt is sampled G times (a group). Statistics are over the *whole given batch*, which the
caller gathers across processes first; ``sharded_group_advantages`` simulates that gather and
scatter so tests can prove the result does not depend on how the batch is split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._util import check_choice

STD_MODES = ("group", "global")
AGGREGATES = ("sum", "gdpo")


def _group_stats(values: Tensor, inverse: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per-sample group mean and population std of ``values`` [N] (float64) -> [N], [N]."""
    counts = torch.bincount(inverse, minlength=num_groups).to(values.dtype)  # [G]
    mean_g = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, inverse, values) / counts
    centred = values - mean_g[inverse]
    var_g = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, inverse, centred**2) / counts
    return mean_g[inverse], var_g.sqrt()[inverse]


def _normalise(
    values: Tensor, inverse: Tensor, num_groups: int, std_mode: str, eps: float
) -> Tensor:
    """``(r - mean_group) / (std + eps)``; exactly 0 in groups whose rewards are all equal."""
    mean, std_g = _group_stats(values, inverse, num_groups)
    std = std_g if std_mode == "group" else values.std(unbiased=False).expand_as(values)
    adv = (values - mean) / (std + eps)
    return torch.where(std_g > 0, adv, torch.zeros_like(adv))


def _check_inputs(
    rewards: Tensor, group_ids: Tensor, weights: Tensor | Sequence[float] | None
) -> tuple[Tensor, Tensor]:
    r = rewards.detach().to(torch.float64)
    if r.ndim == 1:
        r = r[:, None]  # [N] -> [N, 1]
    if r.ndim != 2 or r.shape[0] == 0:
        raise ValueError(
            f"rewards must have shape [N] or [N, R] with N > 0, got {list(rewards.shape)}"
        )
    if group_ids.shape != (r.shape[0],) or group_ids.is_floating_point():
        raise ValueError(
            f"group_ids must be an integer tensor of shape [{r.shape[0]}], got "
            f"{group_ids.dtype} {list(group_ids.shape)}"
        )
    if not torch.isfinite(r).all():
        raise ValueError("rewards must be finite")
    w = (
        torch.ones(r.shape[1], dtype=torch.float64)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    if w.shape != (r.shape[1],):
        raise ValueError(
            f"weights must have shape [{r.shape[1]}] (one per reward), got {list(w.shape)}"
        )
    return r.cpu(), w.cpu()


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    weights: Tensor | Sequence[float] | None = None,
    std_mode: str = "global",
    aggregate: str = "sum",
    eps: float = 1e-8,
) -> Tensor:
    """GRPO advantages of the gathered batch (docs/algorithm.md §5).

    ``"sum"``: ``r = sum_j w_j r_j``, then ``A = (r - mean_group(r)) / (std + eps)``.
    ``"gdpo"``: each reward normalised in its group the same way, ``a = sum_j w_j A_j``, then
    ``A = (a - mean_batch(a)) / (std_batch(a) + eps)`` over the whole batch.
    ``std_mode``: ``"group"`` std over the group, ``"global"`` (reference default, ``global_std``)
    std over the whole batch. Stds are population stds (ddof 0). Groups whose (aggregated) rewards
    are all equal get A = 0 exactly (no division by zero). Computed in float64.

    Args:
        rewards: [N] or [N, R] (R rewards per sample).
        group_ids: int [N], equal for samples of the same prompt (any integer labels).
        weights: [R] weights of the rewards (default all 1).
    Returns:
        float32 [N] on the device of ``rewards``.
    """
    check_choice(std_mode, STD_MODES, "std_mode")
    check_choice(aggregate, AGGREGATES, "aggregate")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    r, w = _check_inputs(rewards, group_ids, weights)
    _, inverse = torch.unique(group_ids.cpu(), return_inverse=True)
    num_groups = int(inverse.max()) + 1
    if aggregate == "sum":
        adv = _normalise(r @ w, inverse, num_groups, std_mode, eps)
    else:
        per_reward = [
            _normalise(r[:, j], inverse, num_groups, std_mode, eps) for j in range(r.shape[1])
        ]
        combined = torch.stack(per_reward, dim=1) @ w  # [N, R] @ [R] -> [N]
        std = combined.std(unbiased=False)
        adv = (combined - combined.mean()) / (std + eps) if std > 0 else torch.zeros_like(combined)
    return adv.to(device=rewards.device, dtype=torch.float32)


def sharded_group_advantages(
    reward_shards: Sequence[Tensor], group_id_shards: Sequence[Tensor], **kwargs: Any
) -> list[Tensor]:
    """Simulate P processes: gather all shards, compute ``group_advantages``, return each slice.

    This is exactly what a trainer does with ``accelerator.gather`` followed by selecting its own
    rows; groups may span shards. ``kwargs`` are passed to ``group_advantages``.
    """
    if len(reward_shards) != len(group_id_shards) or not reward_shards:
        raise ValueError(
            "reward_shards and group_id_shards must be non-empty lists of equal length"
        )
    adv = group_advantages(
        torch.cat(list(reward_shards)), torch.cat(list(group_id_shards)), **kwargs
    )
    return list(torch.split(adv, [s.shape[0] for s in reward_shards]))
