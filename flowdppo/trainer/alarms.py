"""Reward-hacking and forgetting alarms, checked at every evaluation (docs/metrics.md).

Each alarm compares the run's own history (its ``metrics.jsonl``: the base model is the
iteration-0 evaluation) with a threshold of the ``alarms`` config section:

- ``alarm/reward_hacking``: the run's own reward on the evaluation images (``eval/reward_mean``)
  is above the base's while the held-out quality score (``eval/strict_overall``, Shapes' exact
  GenEval check; absent for other prompt sources) is below the base's, at the last
  ``hack_evals`` evaluations in a row: the reward rises by a route the task does not reward;
- ``alarm/fd``: ``eval/fd`` more than ``fd_rise`` (a fraction) above the base's;
- ``alarm/diversity``: ``eval/diversity`` below ``diversity_floor`` × the base's;
- ``alarm/kl_budget``: ``eval/kl_base`` above ``kl_budget``.

Each is logged as 1.0 (firing) or 0.0 on every evaluation line where its inputs exist; a firing
alarm prints one warning line, and with ``alarms.stop: true`` the run saves and stops.
"""

from __future__ import annotations

from typing import Any

HELD_OUT = ("eval/strict_overall",)


def _held_out(row: dict[str, Any]) -> float | None:
    for k in HELD_OUT:
        if row.get(k) is not None:
            return float(row[k])
    return None


def check_alarms(cfg: Any, evals: list[dict[str, Any]]) -> tuple[dict[str, float], list[str]]:
    """(``alarm/*`` metrics, messages of the firing ones) for the last of ``evals``.

    ``evals``: the run's evaluation lines so far, ascending, the base's (iteration 0) first and
    the current one last. ``cfg``: the ``alarms`` section."""
    out: dict[str, float] = {}
    msgs: list[str] = []
    if not evals:
        return out, msgs
    base, now = evals[0], evals[-1]

    def fire(name: str, cond: bool, msg: str) -> None:
        out[f"alarm/{name}"] = float(cond)
        if cond:
            msgs.append(f"alarm/{name}: {msg}")

    if (
        cfg.hack_evals > 0
        and base.get("eval/reward_mean") is not None
        and _held_out(base) is not None
    ):
        streak = 0
        for row in evals[1:]:
            r, h = row.get("eval/reward_mean"), _held_out(row)
            hacked = (
                r is not None
                and h is not None
                and r > base["eval/reward_mean"]
                and h < _held_out(base)
            )
            streak = streak + 1 if hacked else 0
        fire(
            "reward_hacking",
            streak >= cfg.hack_evals,
            f"the training reward on the evaluation images is above the base's while the held-out "
            f"score ({HELD_OUT[0]}) is below the base's, at {streak} evaluations in a row "
            f"(alarms.hack_evals={cfg.hack_evals}): the policy may be exploiting the reward",
        )
    if cfg.fd_rise > 0 and now.get("eval/fd") is not None and base.get("eval/fd") is not None:
        limit = base["eval/fd"] * (1 + cfg.fd_rise)
        fire(
            "fd",
            now["eval/fd"] > limit,
            f"FD {now['eval/fd']:.1f} is over {100 * cfg.fd_rise:.0f}% above the base's "
            f"{base['eval/fd']:.1f} (alarms.fd_rise): the images drift from the data",
        )
    if (
        cfg.diversity_floor > 0
        and now.get("eval/diversity") is not None
        and base.get("eval/diversity") is not None
    ):
        floor = base["eval/diversity"] * cfg.diversity_floor
        fire(
            "diversity",
            now["eval/diversity"] < floor,
            f"within-prompt diversity {now['eval/diversity']:.3f} is below "
            f"{cfg.diversity_floor:g} × the base's {base['eval/diversity']:.3f} "
            "(alarms.diversity_floor): the samples of a prompt collapse",
        )
    if cfg.kl_budget is not None and now.get("eval/kl_base") is not None:
        fire(
            "kl_budget",
            now["eval/kl_base"] > cfg.kl_budget,
            f"eval/kl_base {now['eval/kl_base']:.3g} exceeds alarms.kl_budget={cfg.kl_budget:g}",
        )
    return out, msgs
