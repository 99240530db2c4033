"""Evaluation helpers: Wilson intervals, the per-category prompt cycle, the table."""

from __future__ import annotations

import numpy as np
import pytest

from flowdppo.shapes.evaluate import eval_specs, markdown_table, score_eval, wilson
from flowdppo.shapes.prompts import CATEGORIES, sample_scenes
from flowdppo.shapes.render import render


def test_wilson_against_closed_forms():
    # k = 0: the upper bound is z^2 / (n + z^2); 5/10: the textbook interval [0.2366, 0.7634].
    assert wilson(0, 10) == pytest.approx((0.0, 1.96**2 / (10 + 1.96**2)))
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


def test_eval_specs_cycle_each_categorys_test_prompts():
    specs = eval_specs(7, categories=("single_object",))  # 5 test prompts, cycled
    assert [s.text for s in specs[5:]] == [s.text for s in specs[:2]]
    assert [s.category for s in eval_specs(2)] == [c for c in CATEGORIES for _ in range(2)]
    with pytest.raises(ValueError, match="n_per_category"):
        eval_specs(0)


def test_score_eval_on_true_renders_is_perfect():
    specs = eval_specs(4)
    images = render(sample_scenes(specs, np.random.default_rng(0)))
    res = score_eval(images, specs, with_features=False)
    assert res.metrics["eval/strict_overall"] == 1.0 and res.passed.all()
    assert [r["category"] for r in res.table] == list(CATEGORIES)
    assert "**100.0%**" in markdown_table(res)
