"""Selection of the trained steps: pool bounds, distinctness, windows, errors."""

from __future__ import annotations

import pytest
import torch

from flowdppo.core.steps import select_train_steps


def test_reference_setting_draws_three_distinct_sorted_steps_from_0_to_4():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        steps = select_train_steps(10, pool=(0.0, 0.5), k=3, generator=g)
        assert len(steps) == 3 and steps == sorted(set(steps))
        assert all(0 <= s < 5 for s in steps)
        seen.update(steps)
    assert seen == {0, 1, 2, 3, 4}  # every pool step is drawn sometimes


def test_pool_bounds_use_floor_robustly():
    """pool (0.29, 0.6) of T = 100 is [29, 60) (0.29 * 100 = 28.999999999999996 in floats)."""
    g = torch.Generator().manual_seed(1)
    steps = select_train_steps(100, pool=(0.29, 0.6), k=31, generator=g)
    assert steps == list(range(29, 60))


def test_window_is_consecutive_inside_the_pool():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(100):
        steps = select_train_steps(10, pool=(0.1, 0.6), k=2, mode="window", generator=g)
        assert steps == list(range(steps[0], steps[0] + 2)) and 1 <= steps[0] <= 4
        starts.add(steps[0])
    assert starts == {1, 2, 3, 4}


def test_same_generator_seed_same_steps():
    a = select_train_steps(20, k=4, generator=torch.Generator().manual_seed(7))
    b = select_train_steps(20, k=4, generator=torch.Generator().manual_seed(7))
    assert a == b


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 6}, r"k=6 exceeds the pool size 5 \(steps \[0, 5\)"),
        ({"k": 0}, "k must be an int >= 1"),
        ({"pool": (0.5, 0.5)}, "pool must be"),
        ({"pool": (-0.1, 0.5)}, "pool must be"),
        ({"mode": "block"}, r"mode must be one of \['random', 'window'\], got 'block'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_train_steps(10, **kwargs)
