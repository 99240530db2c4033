"""The ceiling a set of RL runs shows: the best strict accuracy each test category reached.

For every run directory given whose iteration-0 evaluation is the reference run's, category by
category (the same base model and the same evaluation protocol), the best evaluation after
iteration 0 of each category, over all those runs and evaluations, and where it was reached.
The mean of those per-category bests is an optimistic ceiling of what the recipes tried reach
together: each category at its luckiest evaluation (a maximum over noisy evaluations).

    .venv/bin/python benchmarks/shapes_runs_best.py runs/s*/*/ --reference runs/s6/headline_reduced
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flowdppo.trainer.logging import read_metrics

PREFIX = "eval/strict_"


def categories(row: dict) -> dict[str, float]:
    """Per-category strict accuracy of an eval line (no overall)."""
    return {
        k.removeprefix(PREFIX): v
        for k, v in row.items()
        if k.startswith(PREFIX) and k != PREFIX + "overall"
    }


def start(run: Path) -> dict[str, float] | None:
    """The run's iteration-0 evaluation per category, or None when it has none."""
    rows = [r for r in read_metrics(run, "eval") if r["iter"] == 0]
    return categories(rows[0]) if rows else None


def best_per_category(
    runs: list[Path], reference: Path
) -> tuple[list[Path], dict[str, tuple[float, Path, int]], float]:
    """Runs that start like ``reference``; per category (best, run, iteration); best overall."""
    ref = start(reference)
    if ref is None:
        raise ValueError(f"{reference}: no evaluation at iteration 0 to compare runs against")
    kept = [r for r in runs if (r / "metrics.jsonl").exists() and start(r) == ref]
    best: dict[str, tuple[float, Path, int]] = {}
    overall = 0.0
    for run in kept:
        for row in read_metrics(run, "eval"):
            if row["iter"] == 0:
                continue
            overall = max(overall, row[PREFIX + "overall"])
            for cat, v in categories(row).items():
                if cat not in best or v > best[cat][0]:
                    best[cat] = (v, run, row["iter"])
    return kept, best, overall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run directories")
    ap.add_argument(
        "--reference", type=Path, required=True, help="a run on the base model of interest"
    )
    a = ap.parse_args()
    kept, best, overall = best_per_category(a.runs, a.reference)
    if not best:
        raise SystemExit(
            f"no run among {len(a.runs)} starts like {a.reference} and evaluates later"
        )
    print(f"{len(kept)} runs start like {a.reference}\n")
    print("| category | best strict | run | iteration |\n|---|---|---|---|")
    for cat, (v, run, it) in sorted(best.items()):
        print(f"| {cat} | {100 * v:.0f}% | {run} | {it} |")
    mean = sum(v for v, _, _ in best.values()) / len(best)
    print(
        f"\nmean of the per-category bests: {100 * mean:.1f}%; best overall of any one "
        f"evaluation: {100 * overall:.1f}%"
    )


if __name__ == "__main__":
    main()
