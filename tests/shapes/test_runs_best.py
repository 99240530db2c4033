"""benchmarks/shapes_runs_best.py: per-category bests over runs that start from the same evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_modules import load_benchmark

best = load_benchmark("shapes_runs_best")


def _run(root: Path, name: str, evals: dict[int, tuple[float, float]]) -> Path:
    """A run directory whose eval lines hold (counting, position) per iteration, plus a train line."""
    run = root / name
    run.mkdir()
    lines = [{"kind": "train", "iter": 1, "reward/mean": 0.5}]
    for it, (c, p) in evals.items():
        row = {"eval/strict_counting": c, "eval/strict_position": p}
        lines.append({"kind": "eval", "iter": it, "eval/strict_overall": (c + p) / 2, **row})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def test_bests_come_from_any_run_and_evaluation_of_the_same_start(tmp_path) -> None:
    a = _run(tmp_path, "a", {0: (0.4, 0.2), 40: (0.6, 0.1), 80: (0.5, 0.3)})
    b = _run(tmp_path, "b", {0: (0.4, 0.2), 40: (0.7, 0.2)})
    other = _run(tmp_path, "other", {0: (0.5, 0.2), 40: (0.9, 0.9)})  # another base
    no_eval = tmp_path / "empty"
    no_eval.mkdir()
    kept, bests, overall = best.best_per_category([a, b, other, no_eval], a)
    assert kept == [a, b]
    assert bests == {"counting": (0.7, b, 40), "position": (0.3, a, 80)}
    assert overall == pytest.approx(0.45)  # b at 40; iteration 0 never counts


def test_a_reference_without_a_start_is_an_error(tmp_path) -> None:
    late = _run(tmp_path, "late", {40: (0.6, 0.1)})
    with pytest.raises(ValueError, match="no evaluation at iteration 0"):
        best.best_per_category([late], late)
