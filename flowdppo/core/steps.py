"""Which denoising steps are stochastic and trained (docs/algorithm.md §2).

A pool ``[floor(T f0), floor(T f1))`` of early (high-noise) steps; K of them are drawn per rollout
batch (the same K for every sample of the batch), or K consecutive ones (a window). Every other
step runs the ODE. Reference settings: T = 10, pool (0, 0.5) = steps 0..4, K = 3.
"""

from __future__ import annotations

import math

import torch

from ._util import check_choice

MODES = ("random", "window")


def _floor(value: float) -> int:
    # Round first so that float noise (0.29 * 100 = 28.999999999999996) does not lose a step.
    return math.floor(round(value, 9))


def select_train_steps(
    num_inference_steps: int,
    *,
    pool: tuple[float, float] = (0.0, 0.5),
    k: int = 3,
    mode: str = "random",
    generator: torch.Generator | None = None,
) -> list[int]:
    """Draw the K trained step indices of one rollout batch, ascending.

    ``pool = (f0, f1)`` with 0 <= f0 < f1 <= 1 selects steps ``[floor(T f0), floor(T f1))``.
    ``"random"``: K distinct steps uniformly from the pool; ``"window"``: K consecutive steps
    starting uniformly in ``[floor(T f0), floor(T f1) - K]``. Randomness from ``generator``.

    Returns:
        sorted list of K distinct ints in [0, T).
    """
    check_choice(mode, MODES, "mode")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    f0, f1 = pool
    if not 0.0 <= f0 < f1 <= 1.0:
        raise ValueError(f"pool must be (f0, f1) with 0 <= f0 < f1 <= 1, got {pool!r}")
    lo, hi = _floor(num_inference_steps * f0), _floor(num_inference_steps * f1)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k > hi - lo:
        raise ValueError(
            f"k={k} exceeds the pool size {hi - lo} (steps [{lo}, {hi}) of "
            f"num_inference_steps={num_inference_steps} with pool={pool})"
        )
    if mode == "random":
        picks = torch.randperm(hi - lo, generator=generator)[:k] + lo
        return sorted(int(i) for i in picks)
    start = lo + int(torch.randint(0, hi - lo - k + 1, (1,), generator=generator))
    return list(range(start, start + k))
