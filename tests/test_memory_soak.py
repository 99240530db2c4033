"""``benchmarks/memory_soak.py`` runs (a short soak) and its slope is least squares: checked on a
line with known slope."""

from __future__ import annotations

import pytest
from benchmark_modules import load_benchmark


def test_slope_of_a_known_line():
    bench = load_benchmark("memory_soak")
    b, hw = bench.slope([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0])
    assert b == pytest.approx(2.0) and hw == pytest.approx(0.0, abs=1e-9)


def test_a_short_soak_reports_a_slope(capsys):
    bench = load_benchmark("memory_soak")
    assert bench.main(["--iters", "30", "--every", "5", "--skip", "10", "--eval-every", "15"]) == 0
    out = capsys.readouterr().out
    assert "RSS slope:" in out and out.count("RSS ") >= 5
