"""``loss.delta_schedule: adaptive`` in the trainer: the config's rules, the band rule applied to
every logged iteration (δ of iteration i+1 from δ, the measured KL and the target of iteration i),
the δ the loss used, the base-KL budget spread over the run, and an exact resume of δ."""

from __future__ import annotations

import itertools

import pytest

from flowdppo.config import load_config
from flowdppo.config.schema import ConfigError
from flowdppo.core import AdaptiveDelta
from flowdppo.trainer.trainer import Trainer

from .tiny import read_lines, tiny_config, without_time


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["loss.delta_schedule=adaptive"], "exactly one of loss.target_step_kl"),
        (
            [
                "loss.delta_schedule=adaptive",
                "loss.target_step_kl=1e-6",
                "loss.target_base_kl=1e-4",
            ],
            "exactly one of",
        ),
        (
            ["loss.delta_schedule=adaptive", "loss.name=ratio_clip", "loss.target_step_kl=1e-6"],
            "only its mask has a δ",
        ),
        (["loss.target_step_kl=1e-6"], "null with loss.delta_schedule: fixed"),
        (["loss.delta_schedule=adaptive", "loss.target_step_kl=-1"], "loss.target_step_kl"),
    ],
)
def test_bad_adaptive_settings_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_every_iteration_follows_the_band_rule(tiny_ckpt, tmp_path):
    cfg = tiny_config(
        tiny_ckpt,
        "loss.delta_schedule=adaptive",
        "loss.target_step_kl=1e-8",
        "loss.delta=1e-3",
        "optim.updates_per_iter=2",
        "train.max_iters=6",
    )
    Trainer(cfg, tmp_path / "run").train(6, progress=False)
    rows = read_lines(tmp_path / "run")
    assert rows[0]["trust/delta"] == 1e-3
    check = AdaptiveDelta(delta=1e-3, target=1e-8)
    moves = set()
    for row, nxt in itertools.pairwise(rows):
        assert row["trust/measured_kl"] == row["kl/old_new_mean"]
        assert row["trust/target_kl"] == 1e-8
        assert nxt["trust/delta"] == pytest.approx(check.update(row["trust/measured_kl"]))
        moves.add(nxt["trust/delta"] / row["trust/delta"])
    # This tiny run's old-to-new KL (2e-9 to 1e-7 per iteration) straddles the band around 1e-8:
    # δ was both tightened and loosened.
    assert {0.5, 2.0} <= {round(m, 6) for m in moves}


def test_the_loss_uses_the_adaptive_delta(tiny_ckpt, tmp_path, monkeypatch):
    """Every micro-batch loss of iteration i gets the δ logged as trust/delta of iteration i."""
    import flowdppo.trainer.update as update

    seen: list[float] = []
    real = update.compute_loss

    def spy(name, inp, **kw):
        seen.append(kw["delta"])
        return real(name, inp, **kw)

    monkeypatch.setattr(update, "compute_loss", spy)
    cfg = tiny_config(
        tiny_ckpt,
        "loss.delta_schedule=adaptive",
        "loss.target_step_kl=1e-20",  # always above target: δ halves every iteration
        "loss.delta=1e-6",
        "train.max_iters=3",
    )
    Trainer(cfg, tmp_path / "run").train(3, progress=False)
    rows = read_lines(tmp_path / "run")
    assert [r["trust/delta"] for r in rows] == pytest.approx([1e-6, 5e-7, 2.5e-7])
    per_iter = len(seen) // 3
    assert seen == pytest.approx([d for d in (1e-6, 5e-7, 2.5e-7) for _ in range(per_iter)])


def test_a_target_out_of_the_masks_reach_warns_once_at_the_lower_bound(tiny_ckpt, tmp_path):
    """δ at min_delta (1e-12) with the KL still above the band: one warning naming what can hold
    the target instead; none while δ is above its bound."""
    cfg = tiny_config(
        tiny_ckpt,
        "loss.delta_schedule=adaptive",
        "loss.target_step_kl=1e-20",  # out of reach: the first update of a rollout moves more
        "loss.delta=4e-12",  # 4e-12, 2e-12, then the bound 1e-12 from iteration 3
        "train.max_iters=5",
    )
    with pytest.warns(UserWarning, match="at its lower bound 1e-12") as caught:
        Trainer(cfg, tmp_path / "run").train(5, progress=False)
    bound = [w for w in caught if "lower bound" in str(w.message)]
    assert len(bound) == 1 and str(bound[0].message).startswith("iteration 3:")
    assert "optim.lr" in str(bound[0].message)
    rows = read_lines(tmp_path / "run")
    assert [r["trust/delta"] for r in rows] == pytest.approx([4e-12, 2e-12, 1e-12, 1e-12, 1e-12])


def test_a_base_kl_budget_is_spread_over_the_run_and_uses_the_reference_pass(tiny_ckpt, tmp_path):
    cfg = tiny_config(
        tiny_ckpt,
        "loss.delta_schedule=adaptive",
        "loss.target_base_kl=1e-3",
        "train.kl_ref_every=0",  # the budget needs the reference pass anyway
        "train.max_iters=4",
    )
    Trainer(cfg, tmp_path / "run").train(4, progress=False)
    rows = read_lines(tmp_path / "run")
    assert [r["trust/target_kl"] for r in rows] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert [r["trust/measured_kl"] for r in rows] == [r["kl/ref_mean"] for r in rows]


def test_resume_restores_the_adaptive_delta(tiny_ckpt, tmp_path):
    cfg = tiny_config(
        tiny_ckpt,
        "loss.delta_schedule=adaptive",
        "loss.target_step_kl=1e-7",
        "loss.delta=1e-3",
        "train.save_every=2",
        "train.max_iters=4",
    )
    Trainer(cfg, tmp_path / "a").train(4, progress=False)
    Trainer(cfg, tmp_path / "b").train(2, progress=False)
    t = Trainer(cfg, tmp_path / "b", resume=True)
    assert t.trust is not None and t.trust.delta != 1e-3  # δ after 2 iterations, not the start
    t.train(4, progress=False)
    assert without_time(read_lines(tmp_path / "a")) == without_time(read_lines(tmp_path / "b"))
