"""``flowdppo.trainer.ema``: ``ema ← d·ema + (1-d)·θ`` by hand, and the swap for evaluation."""

from __future__ import annotations

import pytest
import torch

from flowdppo.trainer.ema import EMA

from .test_checkpoint import _Policy


def test_ema_update_by_hand_and_swap() -> None:
    policy = _Policy()
    with torch.no_grad():
        policy.net.weight.zero_()
    ema = EMA(policy, decay=0.5)
    with torch.no_grad():
        policy.net.weight.fill_(1.0)
    ema.update()  # 0.5·0 + 0.5·1
    with torch.no_grad():
        policy.net.weight.fill_(3.0)
    ema.update()  # 0.5·0.5 + 0.5·3
    assert torch.equal(ema.shadow["weight"], torch.full((2, 3), 1.75))
    with ema.swapped_in():
        assert torch.equal(policy.net.weight, torch.full((2, 3), 1.75))
    assert torch.equal(policy.net.weight, torch.full((2, 3), 3.0))  # live weights restored


def test_ema_rejects_bad_decay_and_foreign_state() -> None:
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\), got 1.0"):
        EMA(_Policy(), 1.0)
    with pytest.raises(KeyError, match="do not match"):
        EMA(_Policy(), 0.9).load_state_dict({"other": torch.zeros(1)})
