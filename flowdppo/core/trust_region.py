"""A trust region that sets itself: the adaptive δ of Flow-DPPO's mask (docs/algorithm.md).

PPO's adaptive-KL rule (Schulman et al. 2017, §4) adapts a penalty β so that the measured KL per
iteration stays near a target: halve β when the KL falls below target/1.5, double it above
1.5·target. Here the same band rule moves the *mask threshold* δ, in the opposite direction (a
larger δ lets the policy move further):

    measured > band · target   →  δ ← δ / factor
    measured < target / band   →  δ ← δ · factor
    otherwise                  →  δ unchanged
    then δ ← clamp(δ, min_delta, max_delta)

with ``band = 1.5`` and ``factor = 2`` as in PPO. Since band² = 2.25 > factor, some δ of the
geometric ladder always lies inside the band where the measured KL follows δ, so the rule settles
there instead of oscillating; started 10× too high or too low it is inside the band after about
log2(10) ≈ 4 iterations. ``measured`` is whatever the caller targets: the per-iteration
old-to-new KL the mask sees, or the KL to the base model against a budget spread over the run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AdaptiveDelta:
    """The band rule above; ``delta`` is the current threshold (in the divergence's unit)."""

    delta: float
    target: float
    band: float = 1.5
    factor: float = 2.0
    min_delta: float = 1e-12
    max_delta: float = 1.0

    def __post_init__(self) -> None:
        for name in ("delta", "target", "min_delta", "max_delta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AdaptiveDelta.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.band > 1 or not self.factor > 1:
            raise ValueError(f"band and factor must be > 1, got {self.band}, {self.factor}")
        if self.factor >= self.band**2:
            raise ValueError(
                f"factor {self.factor} >= band² {self.band**2}: a step could jump over the band"
            )
        if self.min_delta > self.max_delta:
            raise ValueError(f"min_delta {self.min_delta} > max_delta {self.max_delta}")
        self.delta = min(max(self.delta, self.min_delta), self.max_delta)

    def update(self, measured: float, target: float | None = None) -> float:
        """Move δ by the band rule for this iteration's ``measured`` divergence; returns δ.

        ``target`` replaces the stored target for this call (a budget schedule). A non-finite
        measurement leaves δ unchanged (the caller skips that iteration's update anyway)."""
        t = self.target if target is None else target
        if measured != measured or measured in (float("inf"), float("-inf")):
            return self.delta
        if measured > self.band * t:
            self.delta /= self.factor
        elif measured < t / self.band:
            self.delta *= self.factor
        self.delta = min(max(self.delta, self.min_delta), self.max_delta)
        return self.delta

    def state_dict(self) -> dict[str, float]:
        return {"delta": self.delta, "target": self.target}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.delta, self.target = float(state["delta"]), float(state["target"])
