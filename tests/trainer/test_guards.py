"""The precision guard and the noise floor (``flowdppo.trainer.guards``).

The guard's rule is checked against bfloat16 arithmetic itself (is ``w + lr`` rounded back to
``w``?); the noise floor is 0 for float32 rollouts on a CPU, positive when the rollout's trained
steps run in bfloat16 (the policy's own reduced-precision path), and then a δ below 10× the floor
draws one warning."""

from __future__ import annotations

import warnings

import pytest
import torch

import flowdppo.trainer.trainer as trainer_mod
from flowdppo.trainer.guards import (
    check_master_precision,
    lost_update_fraction,
    noise_floor_warning,
)
from flowdppo.trainer.trainer import Trainer

from .tiny import read_lines, tiny_config


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lr", [1e-5, 3e-4, 1e-2])
def test_lost_fraction_matches_the_dtypes_own_rounding(dtype, lr):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(4096, generator=g) * 0.05).to(dtype)
    lost = ((w.float() + lr).to(dtype) == w).float().mean().item()
    # Ties (lr exactly half an ulp) round to even either way: a few elements may differ.
    assert lost_update_fraction(w, lr) == pytest.approx(lost, abs=0.01)
    assert lost_update_fraction(w.float(), lr) == 0.0


def test_low_precision_master_weights_are_refused_naming_them():
    named = [("a.lora_B", torch.full((10,), 0.5, dtype=torch.bfloat16)), ("b", torch.ones(3))]
    with pytest.raises(ValueError, match=r"a\.lora_B \(bfloat16: 100% of elements\)"):
        check_master_precision(named, lr=3e-4, allow=False)
    with pytest.warns(UserWarning, match="float32"):
        check_master_precision(named, lr=3e-4, allow=True)
    check_master_precision(named, lr=0.1, allow=False)  # a step of 0.1 moves 0.5 in bf16


def test_a_trainer_with_bfloat16_trainable_weights_is_refused(tiny_ckpt, tmp_path, monkeypatch):
    real = trainer_mod.build_policy

    def bf16_policy(cfg, device):
        policy = real(cfg, device)
        for p in policy.trainable_parameters():
            p.data = p.data.to(torch.bfloat16) + 0.01  # LoRA B starts at 0: give it a value
        return policy

    monkeypatch.setattr(trainer_mod, "build_policy", bf16_policy)
    with pytest.raises(ValueError, match=r"optim\.allow_low_precision_weights"):
        Trainer(tiny_config(tiny_ckpt, "optim.lr=1e-5"), tmp_path / "run")


def test_the_noise_floor_is_zero_in_float32_and_positive_with_bfloat16_rollouts(
    tiny_ckpt, tmp_path
):
    cfg = tiny_config(tiny_ckpt, "train.max_iters=2", "loss.delta=1e-30")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a floor of 0: no warning even at δ = 1e-30
        Trainer(cfg, tmp_path / "fp32").train(2, progress=False)
    assert [r["check/noise_floor_kl"] for r in read_lines(tmp_path / "fp32")] == [0.0, 0.0]

    t = Trainer(cfg, tmp_path / "bf16")
    velocity = t.policy.velocity

    def bf16_rollout(*args, **kwargs):
        if torch.is_grad_enabled():  # the update's forward: float32 as always
            return velocity(*args, **kwargs)
        with t.policy.reduced_precision():  # the rollout's trained steps in bfloat16
            return velocity(*args, **kwargs)

    t.policy.velocity = bf16_rollout
    with pytest.warns(UserWarning, match="noise floor") as record:
        t.train(2, progress=False)
    assert sum("noise floor" in str(w.message) for w in record) == 1  # once, not every iteration
    floors = [r["check/noise_floor_kl"] for r in read_lines(tmp_path / "bf16")]
    assert all(f > 0 for f in floors)


def test_the_warning_rule():
    assert noise_floor_warning(1e-7, 1e-5, 10.0) is None
    assert "below 10" in noise_floor_warning(1e-7, 5e-7, 10.0)
    assert noise_floor_warning(0.0, 1e-30, 10.0) is None
    assert noise_floor_warning(1e-7, 5e-7, 0.0) is None  # switched off
