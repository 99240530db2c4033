"""Checks that keep the trust region meaningful (docs/algorithm.md §4, "Guards").

- **Precision guard** (``check_master_precision``, at start-up): an Adam step moves a weight by
  about the learning rate; a weight stored in bfloat16 (8 significant bits) or float16 (11) is
  only changed by a step larger than half the spacing of representable numbers at its value,
  ``ulp(w)/2``. Where the learning rate is below that for more than ``max_lost`` of a tensor's
  elements, the update of a trust-region method (~1e-4 relative) mostly vanishes: the ratio stays
  1 and the reward flat. Such trainable tensors are refused, naming them, unless the
  configuration allows it (``optim.allow_low_precision_weights``: a warning instead).
- **Noise floor** (``noise_floor_warning``, every iteration): before the first optimizer step of
  an iteration the policy *is* the rollout's policy, so the exact KL between the stored means and
  the recomputed ones (``check/noise_floor_kl``, the mean over the first update's terms) is what
  numerics alone produce (reduced-precision rollouts, batch-dependent kernels, another GPU). A
  mask whose δ is below ``train.noise_floor_factor`` × that floor acts on noise: one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

_LOW = {torch.bfloat16: 8, torch.float16: 11}  # significant bits (implicit bit included)


def lost_update_fraction(weight: torch.Tensor, lr: float) -> float:
    """Fraction of the elements of ``weight`` whose value an absolute step of ``lr`` cannot move
    in the tensor's dtype: ``lr < ulp(|w|) / 2`` with ``ulp(x) = 2^(floor(log2 x) - bits + 1)``.
    0 for float32 and wider dtypes (the rounding is then far below any learning rate used)."""
    bits = _LOW.get(weight.dtype)
    if bits is None:
        return 0.0
    w = weight.detach().float().abs()
    w = w[w > 0]
    if w.numel() == 0:
        return 0.0
    ulp = torch.exp2(torch.floor(torch.log2(w)) - bits + 1)
    return float((lr < ulp / 2).float().mean())


def check_master_precision(
    named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, allow: bool, max_lost: float = 0.01
) -> None:
    """Refuse (``allow``: warn about) trainable tensors whose dtype would erase ``lr``-sized steps."""
    bad = []
    for name, p in named:
        frac = lost_update_fraction(p, lr)
        if frac > max_lost:
            bad.append(
                f"{name} ({str(p.dtype).replace('torch.', '')}: {100 * frac:.0f}% of elements)"
            )
    if not bad:
        return
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    msg = (
        f"trainable weights in a dtype whose rounding erases a step of optim.lr={lr:g}: {shown}. "
        "Keep trainable weights (master weights) in float32 (model.dtype=float32, or LoRA "
        "adapters in float32 with the base in bfloat16), or raise optim.lr"
    )
    if not allow:
        raise ValueError(msg + "; optim.allow_low_precision_weights=true trains anyway")
    warnings.warn(msg, stacklevel=2)


def noise_floor_warning(floor: float, delta: float, factor: float) -> str | None:
    """The one-line warning when the mask's δ is below ``factor`` × the measured noise floor."""
    if factor <= 0 or not floor > 0 or delta >= factor * floor:
        return None
    return (
        f"loss.delta={delta:g} is below {factor:g} × the noise floor {floor:.3g} (check/"
        "noise_floor_kl: the KL between the rollout's and the training forward's means before any "
        "update, from numerics alone); the mask would act on rounding noise. Raise loss.delta, "
        "or roll out in the training precision (sampling.untrained_precision, model.dtype)"
    )
