"""``benchmarks/iteration_cost.py`` on a tiny Shapes model: it runs, and the forward-call counts it
prints are the protocol's (one network call per rollout step and per trained step with β = 0, the
monitor's reference pass excluded): a replay pass or an unbatched CFG would show as 2 here."""

from __future__ import annotations

from benchmark_modules import load_benchmark


def test_iteration_cost_counts_one_call_per_step(capsys):
    bench = load_benchmark("iteration_cost")
    assert bench.main(["--tiny", "--iters", "2", "--warmup", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "network calls per rollout step (per forward batch): 1\n" in out
    assert "network calls per trained step (per micro-batch): 1\n" in out
    assert "real/floor = " in out and "Flow-DPPO update / ratio-clip update" in out
