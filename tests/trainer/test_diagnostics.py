"""The ratio-vs-divergence diagnostic: the sampled terms a run writes (bounded, exact, and without
changing training), the two blocking rules by hand, and ``flowdppo plot --diagnostic ratio``."""

from __future__ import annotations

import math

import pytest

from flowdppo.diagnostics import blocked, by_step, read_terms
from flowdppo.trainer.trainer import Trainer

from .tiny import cli, read_lines, tiny_config, without_time


def test_a_run_writes_a_bounded_sample_of_terms_and_trains_as_without(tiny_ckpt, tmp_path):
    sets = ["optim.updates_per_iter=2", "train.max_iters=3"]
    on = tiny_config(tiny_ckpt, *sets, "train.diagnostic_terms=3")
    off = tiny_config(tiny_ckpt, *sets, "train.diagnostic_terms=0")
    Trainer(on, tmp_path / "on").train(3, progress=False)
    Trainer(off, tmp_path / "off").train(3, progress=False)
    assert without_time(read_lines(tmp_path / "on")) == without_time(read_lines(tmp_path / "off"))
    assert not (tmp_path / "off" / "diagnostics").exists()
    terms = read_terms(tmp_path / "on")
    # ceil(3 / 2) = 2 terms from each of the 2 updates, each of the 3 iterations.
    assert [(t["iter"], t["update"]) for t in terms] == [
        (i, u) for i in (1, 2, 3) for u in (0, 0, 1, 1)
    ]
    first = [t for t in terms if t["update"] == 0]
    assert all(t["kl"] == 0.0 and t["log_rho"] == 0.0 for t in first)  # on-policy
    later = [t for t in terms if t["update"] == 1]
    assert all(t["kl"] > 0 and t["step"] in range(4) for t in later)


def test_a_resumed_iteration_keeps_its_last_block(tmp_path):
    path = tmp_path / "diagnostics" / "ratio_kl.jsonl"
    path.parent.mkdir()
    row = '{{"iter": {i}, "terms": [{{"update": 0, "step": 0, "log_rho": {v}, "kl": 0.0, "adv": 1.0}}]}}\n'
    path.write_text(row.format(i=1, v=0.1) + row.format(i=2, v=0.2) + row.format(i=2, v=0.3))
    assert [(t["iter"], t["log_rho"]) for t in read_terms(tmp_path)] == [(1, 0.1), (2, 0.3)]
    with pytest.raises(FileNotFoundError, match="diagnostic_terms"):
        read_terms(tmp_path / "nothing")


def test_the_two_rules_by_hand():
    eps, delta = 1e-4, 1e-6
    terms = [  # (log ρ, KL, A): which rule blocks
        (math.log(1 + 2e-4), 1e-8, 1.0),  # ρ above 1+ε, A > 0, small KL: clip only
        (math.log(1 + 5e-5), 2e-6, 1.0),  # inside the clip, KL over δ, moving away: mask only
        (math.log(1 + 2e-4), 2e-6, 1.0),  # both
        (math.log(1 - 2e-4), 2e-6, 1.0),  # ρ < 1 with A > 0 moves back: neither
        (math.log(1 - 2e-4), 1e-8, -1.0),  # below 1-ε with A < 0: clip only
    ]
    rows = [{"log_rho": r, "kl": k, "adv": a, "step": i % 2} for i, (r, k, a) in enumerate(terms)]
    b = blocked(rows, delta, eps)
    assert b["clip"].tolist() == [True, False, True, False, True]
    assert b["mask"].tolist() == [False, True, True, False, False]
    summary = by_step(rows, delta, eps)
    assert [r["step"] for r in summary] == [0, 1, "all"]
    assert summary[-1]["clip_only_frac"] == pytest.approx(2 / 5)
    assert summary[-1]["mask_only_frac"] == pytest.approx(1 / 5)


def test_plot_diagnostic_ratio_draws_and_tabulates(tiny_ckpt, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(tiny_ckpt, "train.diagnostic_terms=8", "train.max_iters=2"), run).train(
        2, progress=False
    )
    out = tmp_path / "ratio.png"
    proc = cli("plot", "--run", str(run), "--diagnostic", "ratio", "--out", str(out))
    assert out.stat().st_size > 1000
    assert "| step | terms |" in proc.stdout and "| all |" in proc.stdout
    proc = cli("plot", "--run", str(run), "--diagnostic", "ratio", "--delta", "-1", check=False)
    assert proc.returncode == 2 and "--delta must be > 0" in proc.stderr
