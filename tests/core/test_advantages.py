"""GRPO advantages: hand values, zero-std groups, multi-reward aggregation, shard invariance."""

from __future__ import annotations

import math

import pytest
import torch

from flowdppo.core.advantages import group_advantages, sharded_group_advantages

TOL = {"atol": 1e-6, "rtol": 0.0}


def test_group_std_hand_values_and_zero_std_group():
    """Group a: [1, 2, 3], mean 2, population std sqrt(2/3) -> ∓1.224745; group b: [5, 5] -> 0."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0])
    groups = torch.tensor([7, 7, 7, 100, 100])  # arbitrary labels
    adv = group_advantages(rewards, groups, std_mode="group")
    r = math.sqrt(1.5)
    torch.testing.assert_close(adv, torch.tensor([-r, 0.0, r, 0.0, 0.0]), **TOL)
    assert adv.dtype == torch.float32


def test_global_std_hand_values():
    """Batch std of [1, 2, 3, 5, 5] is 1.6 (variance 12.8 / 5), so group a gets ∓1/1.6 = ∓0.625."""
    adv = group_advantages(
        torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0]), torch.tensor([0, 0, 0, 1, 1]), std_mode="global"
    )
    torch.testing.assert_close(adv, torch.tensor([-0.625, 0.0, 0.625, 0.0, 0.0]), **TOL)


def test_all_equal_rewards_give_zero_advantages_without_nan():
    for mode in ("group", "global"):
        adv = group_advantages(
            torch.full((6,), 0.3), torch.tensor([0, 0, 0, 1, 1, 1]), std_mode=mode
        )
        assert torch.equal(adv, torch.zeros(6))
    adv = group_advantages(torch.full((4, 2), 0.3), torch.tensor([0, 0, 1, 1]), aggregate="gdpo")
    assert torch.equal(adv, torch.zeros(4))


def test_sum_with_weights_normalises_the_weighted_sum():
    """r = 2 r1 - r2 = [2, 6, 3, 1] in groups [0, 0, 1, 1] -> means 4, 2; group stds 2, 1."""
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [1.0, 1.0]])
    adv = group_advantages(
        rewards, torch.tensor([0, 0, 1, 1]), weights=[2.0, -1.0], std_mode="group"
    )
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 1.0, -1.0]), **TOL)


def test_gdpo_against_a_hand_computation():
    """r1 = [1, 3, 2, 2] -> per group [-1, 1, 0, 0] (group 1 has zero std);
    r2 = [0, 1, 4, 0] -> [-1, 1, 1, -1]; sum [-2, 2, 1, -1], batch mean 0, std sqrt(2.5)."""
    rewards = torch.tensor([[1.0, 0.0], [3.0, 1.0], [2.0, 4.0], [2.0, 0.0]])
    adv = group_advantages(rewards, torch.tensor([0, 0, 1, 1]), aggregate="gdpo", std_mode="group")
    expected = torch.tensor([-2.0, 2.0, 1.0, -1.0]) / math.sqrt(2.5)
    torch.testing.assert_close(adv, expected, **TOL)


@pytest.mark.parametrize("std_mode", ["group", "global"])
@pytest.mark.parametrize("aggregate", ["sum", "gdpo"])
def test_two_simulated_shards_equal_the_whole_batch(std_mode, aggregate):
    """12 samples in 3 groups of 4, split 5 / 7 so that group 1 spans both shards."""
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, 2, generator=g)
    groups = torch.arange(3).repeat_interleave(4)
    kwargs = {"std_mode": std_mode, "aggregate": aggregate, "weights": [1.0, 0.5]}
    whole = group_advantages(rewards, groups, **kwargs)
    shards = sharded_group_advantages(
        [rewards[:5], rewards[5:]], [groups[:5], groups[5:]], **kwargs
    )
    assert [s.shape[0] for s in shards] == [5, 7]
    torch.testing.assert_close(torch.cat(shards), whole, atol=0, rtol=0)
    # Computing on one shard alone would be wrong: the statistics must be global.
    assert not torch.allclose(group_advantages(rewards[:5], groups[:5], **kwargs), whole[:5])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"group_ids": torch.zeros(3, dtype=torch.long)},
            r"group_ids must be an integer tensor of shape \[4\]",
        ),
        ({"group_ids": torch.zeros(4)}, "group_ids must be an integer tensor"),
        ({"weights": [1.0, 2.0]}, r"weights must have shape \[1\]"),
        ({"std_mode": "batch"}, r"std_mode must be one of \['global', 'group'\], got 'batch'"),
        ({"aggregate": "mean"}, r"aggregate must be one of \['gdpo', 'sum'\], got 'mean'"),
        ({"rewards": torch.zeros(4, 1, 1)}, r"rewards must have shape \[N\] or \[N, R\]"),
        ({"rewards": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, "rewards must be finite"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = {"rewards": torch.zeros(4), "group_ids": torch.tensor([0, 0, 1, 1]), **kwargs}
    with pytest.raises(ValueError, match=match):
        group_advantages(args.pop("rewards"), args.pop("group_ids"), **args)
