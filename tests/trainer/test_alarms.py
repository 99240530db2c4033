"""Reward-hacking and forgetting alarms (``flowdppo.trainer.alarms``): each rule by hand, a
hackable reward on the shipped Shapes base (a reward that pays for red everywhere) firing the
reward-hacking and FD alarms, and ``alarms.stop`` saving and stopping the run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flowdppo.config import load_config
from flowdppo.trainer.alarms import check_alarms
from flowdppo.trainer.trainer import Trainer

from .tiny import read_lines, register_test_rewards, tiny_config

CFG = SimpleNamespace(hack_evals=2, fd_rise=0.5, diversity_floor=0.5, kl_budget=1e-4)
BASE = {
    "iter": 0,
    "eval/reward_mean": 0.5,
    "eval/strict_overall": 0.5,
    "eval/fd": 100.0,
    "eval/diversity": 2.0,
    "eval/kl_base": 0.0,
}


def _ev(i, **kw):
    return {**BASE, "iter": i, **kw}


def test_each_alarm_by_hand():
    out, msgs = check_alarms(CFG, [BASE])
    assert (
        out
        == {
            "alarm/reward_hacking": 0.0,
            "alarm/fd": 0.0,
            "alarm/diversity": 0.0,
            "alarm/kl_budget": 0.0,
        }
        and msgs == []
    )
    hacked = {"eval/reward_mean": 0.6, "eval/strict_overall": 0.4}
    assert check_alarms(CFG, [BASE, _ev(1, **hacked)])[0]["alarm/reward_hacking"] == 0.0
    out, msgs = check_alarms(CFG, [BASE, _ev(1, **hacked), _ev(2, **hacked)])
    assert out["alarm/reward_hacking"] == 1.0 and "2 evaluations in a row" in msgs[0]
    # A good evaluation in between resets the streak.
    evals = [BASE, _ev(1, **hacked), _ev(2), _ev(3, **hacked)]
    assert check_alarms(CFG, evals)[0]["alarm/reward_hacking"] == 0.0
    assert check_alarms(CFG, [BASE, _ev(1, **{"eval/fd": 151.0})])[0]["alarm/fd"] == 1.0
    assert check_alarms(CFG, [BASE, _ev(1, **{"eval/fd": 149.0})])[0]["alarm/fd"] == 0.0
    assert check_alarms(CFG, [BASE, _ev(1, **{"eval/diversity": 0.9})])[0]["alarm/diversity"] == 1.0
    assert check_alarms(CFG, [BASE, _ev(1, **{"eval/kl_base": 2e-4})])[0]["alarm/kl_budget"] == 1.0
    off = SimpleNamespace(hack_evals=0, fd_rise=0.0, diversity_floor=0.0, kl_budget=None)
    assert check_alarms(off, [BASE, _ev(1, **{"eval/fd": 1e9})]) == ({}, [])


def test_a_hackable_reward_fires_the_hacking_and_fd_alarms_on_the_shipped_base(tmp_path):
    """``test_red`` pays for red pixels whatever the prompt: within 8 iterations at lr 2e-2 the
    policy paints red (the reward on the evaluation images rises above the base's) while strict
    accuracy falls to 0 and FD more than doubles."""
    register_test_rewards()
    cfg = load_config(
        None,
        [
            "rewards=[{name: test_red}]",
            "sampling.prompts_per_iter=4",
            "sampling.group_size=4",
            "sampling.train_steps=3",
            "sampling.train_pool=[0.0, 0.5]",
            "sampling.untrained_precision=full",
            "optim.lr=2e-2",
            "optim.lr_schedule=constant",
            "eval.every=2",
            "eval.per_category=4",
            "eval.num_inference_steps=10",
            "eval.kl_samples=8",
            "train.max_iters=8",
            "train.threads=1",
            "train.diagnostic_terms=0",
        ],
    )
    with pytest.warns(UserWarning, match="alarm/fd") as record:
        Trainer(cfg, tmp_path / "run").train(8, progress=False)
    evals = read_lines(tmp_path / "run", "eval")
    assert evals[-1]["alarm/reward_hacking"] == 1.0 and evals[-1]["alarm/fd"] == 1.0
    assert evals[-1]["eval/test_red"] > evals[0]["eval/test_red"]
    assert any("alarm/reward_hacking" in str(w.message) for w in record)


def test_alarms_stop_saves_and_stops_at_the_alarm(tiny_ckpt, tmp_path):
    cfg = tiny_config(
        tiny_ckpt,
        "eval.every=2",
        "eval.per_category=1",
        "eval.kl_samples=2",
        "alarms.kl_budget=1e-30",
        "alarms.stop=true",
        "train.max_iters=6",
    )
    with pytest.warns(UserWarning, match="alarm/kl_budget"):
        Trainer(cfg, tmp_path / "run").train(6, progress=False)
    assert [r["iter"] for r in read_lines(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "iter_000002").is_dir()
