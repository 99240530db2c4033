"""``eval/kl_base`` (``kl_to_base``) against a closed form: a policy whose velocity is the base's
plus a constant c moves every Flow-SDE mean by ``(1 + g²(1-σ)/(2σ))·c·Δ``, whatever the state, so
the per-step KL is known exactly without running any sampler."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from flowdppo.config import load_config
from flowdppo.core import shifted_sigmas
from flowdppo.trainer.evaluation import kl_to_base


class ShiftedPolicy:
    """v = -x (any base field) plus ``c`` while the 'adapter' is on."""

    latent_shape = (3, 4, 4)
    device = torch.device("cpu")

    def __init__(self, c: float, scale: float = 0.0):
        self.c, self.scale, self.on = c, scale, True

    def encode_prompts(self, prompts):
        return prompts

    def velocity(self, x, sigma, cond, guidance_scale):
        return -x + ((self.c + self.scale * x) if self.on else 0.0)

    def sigmas(self, n):
        return shifted_sigmas(n, 1.0)

    @contextmanager
    def reference(self):
        self.on = False
        try:
            yield
        finally:
            self.on = True


def _cfg(*extra: str):
    return load_config(
        None,
        [
            "sampling.num_inference_steps=10",
            "sampling.train_pool=[0.1,0.4]",
            "sampling.eta=0.7",
            "sampling.batch_size=3",
            *extra,
        ],
    )


def _closed_form(c: float, eta: float, reduction: str, dims: int) -> float:
    sig = shifted_sigmas(10, 1.0).double()
    kls = []
    for k in (1, 2, 3):
        s, s_next = float(sig[k]), float(sig[k + 1])
        dt = s_next - s
        g = eta * math.sqrt(s / (1 - s))
        shift = (1 + g**2 * (1 - s) / (2 * s)) * c * dt  # Δμ per dimension
        std = g * math.sqrt(-dt)
        kl_sum = dims * shift**2 / (2 * std**2)
        kls.append(kl_sum / dims if reduction == "mean" else kl_sum)
    return sum(kls) / len(kls)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_to_base_equals_the_closed_form_of_a_constant_velocity_shift(reduction):
    cfg = _cfg(f"loss.reduction={reduction}")
    got = kl_to_base(ShiftedPolicy(0.05), cfg, ["a", "b"], n=7, seed=3)
    want = _closed_form(0.05, 0.7, reduction, 3 * 4 * 4)
    assert got == pytest.approx(want, rel=1e-5)


def test_kl_to_base_is_zero_for_the_base_and_a_function_of_the_seed_not_the_batching():
    """With a state-dependent difference (c·x) the KL depends on the trajectories: the same seed
    gives the same value however the samples are batched, another seed another value."""
    assert kl_to_base(ShiftedPolicy(0.0), _cfg(), ["a"], n=4, seed=0) == 0.0
    pol = ShiftedPolicy(0.0, scale=0.2)
    a = kl_to_base(pol, _cfg("sampling.batch_size=2"), ["a", "b"], n=5, seed=1)
    b = kl_to_base(pol, _cfg("sampling.batch_size=64"), ["a", "b"], n=5, seed=1)
    c = kl_to_base(pol, _cfg("sampling.batch_size=64"), ["a", "b"], n=5, seed=2)
    assert a == pytest.approx(b, rel=1e-6)
    assert abs(c - a) > 1e-3 * a
