"""Scoring a batch with several rewards: chunking, device moves, validation, failure policy.

The trainer calls :func:`build_rewards` once (from the YAML ``rewards:`` list) and
:func:`compute_rewards` every iteration. Each reward's result is checked: it must be a
``RewardOutput`` whose ``scores`` are a finite 1-D tensor with one value per image. A failure (an
exception, a wrong length or type, a NaN/inf) either raises :class:`RewardError` naming the reward
and what was wrong (``on_error="raise"``, the default) or drops the affected samples from this
iteration (``on_error="drop"``): they are marked ``False`` in ``valid``, their scores are set to 0
(never NaN), and they are counted in the metrics. The caller must exclude invalid samples before
computing advantages (``RewardBatch.valid``).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from flowdppo.rewards.base import _REGISTRY, Reward, RewardOutput, build_reward

logger = logging.getLogger(__name__)
OnError = Literal["raise", "drop"]
_SPEC_KEYS = ("name", "weight", "kwargs")


class RewardError(RuntimeError):
    """A reward failed or returned an invalid result; the message names the reward."""


@dataclass
class RewardSpec:
    """One entry of the YAML ``rewards:`` list: ``{name: pickscore, weight: 1.0, kwargs: {...}}``."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"rewards[].name must be a non-empty string, got {self.name!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"rewards[{self.name}].weight must be a finite number, got {w!r}")
        self.weight = float(w)
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"rewards[{self.name}].kwargs must be a mapping, got {self.kwargs!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardSpec:
        """Build from a YAML mapping; unknown keys are errors."""
        if not isinstance(data, dict):
            raise ValueError(f"a rewards[] entry must be a mapping, got {data!r}")
        unknown = sorted(set(data) - set(_SPEC_KEYS))
        if unknown:
            raise ValueError(
                f"rewards[{data.get('name', '?')}]: unknown key(s) {unknown}; allowed: {list(_SPEC_KEYS)}"
            )
        if "name" not in data:
            raise ValueError(f"a rewards[] entry needs a 'name', got {data!r}")
        return cls(**data)


@dataclass
class LoadedReward:
    """A built reward with its aggregation weight."""

    name: str
    weight: float
    reward: Reward


def _check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(k for k, p in params.items() if p.kind is not p.VAR_POSITIONAL)
        raise ValueError(f"reward {name!r}: unknown option(s) {unknown}; allowed: {allowed}")


def build_rewards(specs: Sequence[RewardSpec | dict[str, Any]]) -> list[LoadedReward]:
    """Build each reward of ``specs`` (specs or YAML mappings); names must be distinct."""
    parsed = [s if isinstance(s, RewardSpec) else RewardSpec.from_dict(s) for s in specs]
    if not parsed:
        raise ValueError("rewards: at least one reward is required")
    names = [s.name for s in parsed]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"rewards: each reward may appear once, got duplicates {dup}")
    loaded = []
    for spec in parsed:
        loaded.append(LoadedReward(spec.name, spec.weight, _build_one(spec)))
    return loaded


def _build_one(spec: RewardSpec) -> Reward:
    from flowdppo.rewards.base import available_rewards

    if spec.name not in available_rewards():
        raise ValueError(
            f"unknown reward {spec.name!r}; available: {', '.join(available_rewards())}"
        )
    _check_kwargs(spec.name, spec.kwargs)
    return build_reward(spec.name, **spec.kwargs)


@dataclass
class RewardBatch:
    """Per-reward scores for one batch of B images.

    ``scores[name]``: [B] float32 CPU, 0 where the sample is invalid. ``valid``: [B] bool, False
    for samples dropped by any reward. ``details["name/key"]``: [B, ...] (NaN rows where dropped).
    ``metrics``: ``reward/dropped`` (count), ``reward/<name>_mean`` / ``_std`` over valid samples,
    ``reward/<name>_dropped`` (count), ``time/reward_<name>_s``.
    """

    names: list[str]
    weights: torch.Tensor  # [R] float32
    scores: dict[str, torch.Tensor]
    valid: torch.Tensor
    details: dict[str, torch.Tensor]
    metrics: dict[str, float]

    def matrix(self) -> torch.Tensor:
        """Scores stacked as [B, R] float32 in ``names`` order (the input of group_advantages)."""
        return torch.stack([self.scores[n] for n in self.names], dim=1)

    def weighted_sum(self) -> torch.Tensor:
        """[B] = Σ_r weight_r · score_r (the ``sum`` aggregation before normalisation)."""
        return self.matrix() @ self.weights

    @classmethod
    def concat(cls, batches: Sequence[RewardBatch]) -> RewardBatch:
        """One batch of consecutive chunks scored by the same rewards: scores, valid and the
        details every chunk has are concatenated; per-chunk ``metrics`` are not (recompute them
        on the whole batch)."""
        if not batches or any(b.names != batches[0].names for b in batches):
            raise ValueError("RewardBatch.concat: need one or more batches of the same rewards")
        keys = set.intersection(*(set(b.details) for b in batches))
        return cls(
            names=batches[0].names,
            weights=batches[0].weights,
            scores={n: torch.cat([b.scores[n] for b in batches]) for n in batches[0].names},
            valid=torch.cat([b.valid for b in batches]),
            details={k: torch.cat([b.details[k] for b in batches]) for k in sorted(keys)},
            metrics={},
        )


def _validate(name: str, out: Any, n: int) -> torch.Tensor:
    """Scores of one chunk as [n] float32 CPU; raise RewardError for a malformed result."""
    if not isinstance(out, RewardOutput):
        raise RewardError(f"reward {name!r} returned {type(out).__name__}, expected RewardOutput")
    s = out.scores
    if not isinstance(s, torch.Tensor):
        raise RewardError(f"reward {name!r}: scores must be a torch.Tensor, got {type(s).__name__}")
    if s.ndim != 1 or s.shape[0] != n:
        raise RewardError(
            f"reward {name!r} returned scores of shape {tuple(s.shape)} for {n} images; expected ({n},)"
        )
    for key, d in out.details.items():
        if not isinstance(d, torch.Tensor) or d.ndim < 1 or d.shape[0] != n:
            shape = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise RewardError(
                f"reward {name!r}: detail {key!r} has shape {shape}, expected ({n}, ...)"
            )
    return s.detach().to("cpu", torch.float32)


def _score_chunk(
    lr: LoadedReward, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
) -> RewardOutput:
    n = images.shape[0]
    x = images.to(lr.reward.device)
    try:
        out = lr.reward(x, prompts, metadata)
    except RewardError:
        raise
    except Exception as exc:  # any failure inside a reward is reported under its name
        raise RewardError(f"reward {lr.name!r} raised {type(exc).__name__}: {exc}") from exc
    scores = _validate(lr.name, out, n)
    details = {k: v.detach().cpu() for k, v in out.details.items()}
    return RewardOutput(scores=scores, details=details)


def _score_one_reward(
    lr: LoadedReward,
    images: torch.Tensor,
    prompts: list[str],
    metadata: list[dict[str, Any]],
    on_error: OnError,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """→ scores [B] (NaN where failed), ok [B] bool, details {key: [B, ...]}."""
    b = images.shape[0]
    scores = torch.full((b,), float("nan"))
    chunks: list[tuple[int, int, dict[str, torch.Tensor]]] = []
    bs = int(lr.reward.batch_size)
    for start in range(0, b, bs):
        end = min(start + bs, b)
        try:
            out = _score_chunk(lr, images[start:end], prompts[start:end], metadata[start:end])
        except RewardError as exc:
            if on_error == "raise":
                raise
            logger.warning("dropping samples %d..%d: %s", start, end - 1, exc)
            continue  # the chunk stays NaN → dropped
        scores[start:end] = out.scores
        chunks.append((start, end, out.details))
    finite = torch.isfinite(scores)
    if on_error == "raise" and not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise RewardError(
            f"reward {lr.name!r} returned non-finite scores for samples {bad[:10]} "
            f"({len(bad)} of {b}): {scores[~finite][:10].tolist()}"
        )
    return scores, finite, _assemble_details(lr.name, chunks, b)


def _assemble_details(
    name: str, chunks: list[tuple[int, int, dict[str, torch.Tensor]]], b: int
) -> dict[str, torch.Tensor]:
    details: dict[str, torch.Tensor] = {}
    for start, end, d in chunks:
        for key, value in d.items():
            full_key = f"{name}/{key}"
            if full_key not in details:
                fill = float("nan") if value.is_floating_point() else 0
                details[full_key] = torch.full((b, *value.shape[1:]), fill, dtype=value.dtype)
            details[full_key][start:end] = value
    return details


def compute_rewards(
    rewards: Sequence[LoadedReward],
    images: torch.Tensor,
    prompts: list[str],
    metadata: list[dict[str, Any]] | None = None,
    *,
    on_error: OnError = "raise",
) -> RewardBatch:
    """Score ``images`` [B, 3, H, W] (float, [0, 1]) with every reward; see the module docstring."""
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
    b = images.shape[0]
    metadata = [{} for _ in range(b)] if metadata is None else list(metadata)
    if len(prompts) != b or len(metadata) != b:
        raise ValueError(
            f"compute_rewards: {b} images but {len(prompts)} prompts and {len(metadata)} metadata"
        )
    valid = torch.ones(b, dtype=torch.bool)
    scores: dict[str, torch.Tensor] = {}
    details: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    for lr in rewards:
        t0 = time.perf_counter()
        s, ok, d = _score_one_reward(lr, images, list(prompts), metadata, on_error)
        metrics[f"time/reward_{lr.name}_s"] = time.perf_counter() - t0
        metrics[f"reward/{lr.name}_dropped"] = float((~ok).sum())
        valid &= ok
        scores[lr.name] = s
        details.update(d)
    if not bool(valid.any()):
        raise RewardError(f"all {b} samples were dropped: {_drop_summary(metrics)}")
    for name, s in scores.items():
        kept = s[valid]
        metrics[f"reward/{name}_mean"] = float(kept.mean())
        metrics[f"reward/{name}_std"] = float(kept.std(unbiased=False))
        scores[name] = torch.where(valid, s, torch.zeros_like(s))  # NaN never leaves here
    metrics["reward/dropped"] = float((~valid).sum())
    weights = torch.tensor([lr.weight for lr in rewards], dtype=torch.float32)
    names = [lr.name for lr in rewards]
    return RewardBatch(names, weights, scores, valid, details, metrics)


def _drop_summary(metrics: dict[str, float]) -> str:
    drops = {k: int(v) for k, v in metrics.items() if k.endswith("_dropped")}
    return ", ".join(f"{k.removeprefix('reward/')}={v}" for k, v in drops.items())
