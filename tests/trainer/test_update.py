"""``flowdppo.trainer.update``: mini-batches of (sample, step) pairs, metric reduction, and the
batch × accumulation invariance of STYLE.md (micro-batch 1 ≡ the whole mini-batch)."""

from __future__ import annotations

import math

import pytest
import torch

from flowdppo.config import RunConfig
from flowdppo.trainer.trainer import Trainer
from flowdppo.trainer.update import MetricAccumulator, learning_rate, minibatches

from .tiny import tiny_config


def _no_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    return t


def test_metric_accumulator_weights_means_by_terms_and_keeps_extremes() -> None:
    acc = MetricAccumulator()
    acc.add({"ratio/mean": 1.0, "ratio/max": 1.5, "ratio/min": 0.9, "kl/old_new_max": 2e-6}, 3)
    acc.add({"ratio/mean": 2.0, "ratio/max": 1.2, "ratio/min": 0.5, "kl/old_new_max": 1e-6}, 1)
    out = acc.result(_no_reduce)
    assert out == {
        "ratio/mean": (3 * 1.0 + 1 * 2.0) / 4,
        "ratio/max": 1.5,
        "ratio/min": 0.5,
        "kl/old_new_max": 2e-6,
    }


def test_metric_accumulator_with_keys_it_never_saw() -> None:
    """A process that held no pair still reduces every key (neutral values: 0/0 → 0, ±inf)."""
    out = MetricAccumulator().result(_no_reduce, ["ratio/max", "ratio/mean", "ratio/min"])
    assert out == {"ratio/max": -math.inf, "ratio/mean": 0.0, "ratio/min": math.inf}


def test_metric_accumulator_reduces_all_metrics_in_one_collective_per_kind() -> None:
    """Against a second process's values (sums and extremes), in 3 collectives, not 1 per key."""
    acc = MetricAccumulator()
    acc.add({"ratio/mean": 1.0, "ratio/max": 1.5, "ratio/min": 0.9, "loss/policy": -2.0}, 3)
    other = {"sum": [5.0, 2.0, 1.0, 1.0], "max": [1.7], "min": [0.95]}  # [sums..., weights...]
    calls = []

    def reduce(t: torch.Tensor, op: str) -> torch.Tensor:
        calls.append(op)
        assert t.dtype == torch.float64 and t.ndim == 1
        mine = torch.tensor(other[op], dtype=torch.float64)
        return (
            t + mine
            if op == "sum"
            else torch.maximum(t, mine)
            if op == "max"
            else torch.minimum(t, mine)
        )

    out = acc.result(reduce)
    assert sorted(calls) == ["max", "min", "sum"]
    assert out == {
        "loss/policy": (3 * -2.0 + 5.0) / (3 + 1),
        "ratio/max": 1.7,
        "ratio/mean": (3 * 1.0 + 2.0) / (3 + 1),
        "ratio/min": 0.9,
    }


def test_one_process_keeps_its_gradients_and_zero_fills_missing_ones() -> None:
    """With one process the gradients are the sum already: kept as they are (no copy); a
    parameter without one gets zeros, as the multi-process buffer gives it."""
    from flowdppo.trainer.update import _sum_gradients

    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    a.grad = torch.tensor([1.0, -2.0, 3.0])
    grad = a.grad
    assert _sum_gradients([a, b], _no_reduce, 2.0, processes=1) == 2.0
    assert a.grad is grad and torch.equal(b.grad, torch.zeros(2, 2))
    c = torch.nn.Parameter(torch.ones(3))
    c.grad = grad.clone()
    assert _sum_gradients([c, b], _no_reduce, 1.0) == 1.0  # processes unknown: the flat buffer
    assert torch.equal(c.grad, grad) and c.grad is not grad


def test_minibatches_partition_the_valid_pairs(tiny_ckpt) -> None:
    cfg = tiny_config(tiny_ckpt, "optim.updates_per_iter=3")
    valid = torch.tensor([True, False, True, True])  # sample 1 was dropped
    mbs = minibatches(4, 2, valid, cfg, iteration=5)
    assert [len(m) for m in mbs] == [2, 2, 2]
    pairs = torch.cat(mbs)
    assert sorted(pairs.tolist()) == [0, 1, 4, 5, 6, 7]  # pair = sample * K + step, K = 2
    assert all(
        torch.equal(a, b) for a, b in zip(mbs, minibatches(4, 2, valid, cfg, 5), strict=True)
    )
    assert not all(
        torch.equal(a, b) for a, b in zip(mbs, minibatches(4, 2, valid, cfg, 6), strict=True)
    )


def test_each_epoch_is_a_new_partition_and_the_first_is_unchanged(tiny_ckpt) -> None:
    """optim.epochs = 3: 3 × N mini-batches, each pass a partition of the valid pairs in a new
    order; the first pass is the one-epoch order (so epochs = 1 runs are unchanged)."""
    valid = torch.tensor([True, False, True, True, True, True])
    one = minibatches(6, 3, valid, tiny_config(tiny_ckpt, "optim.updates_per_iter=3"), 5)
    cfg = tiny_config(tiny_ckpt, "optim.updates_per_iter=3", "optim.epochs=3")
    mbs = minibatches(6, 3, valid, cfg, iteration=5)
    assert [len(m) for m in mbs] == [5] * 9  # 15 valid pairs per pass, 3 mini-batches of 5
    want = sorted(p for s in (0, 2, 3, 4, 5) for p in range(3 * s, 3 * s + 3))
    passes = [torch.cat(mbs[3 * e : 3 * e + 3]) for e in range(3)]
    for order in passes:
        assert sorted(order.tolist()) == want
    assert all(torch.equal(a, b) for a, b in zip(one, mbs[:3], strict=True))
    assert not torch.equal(passes[0], passes[1]) and not torch.equal(passes[1], passes[2])


def test_epochs_reuse_every_pair_in_epochs_times_n_steps(tiny_ckpt, tmp_path) -> None:
    """A trainer with optim.epochs = 2 and N = 2 takes 4 optimizer steps per iteration; its first
    two are those of the one-epoch run (bit for bit), and the second pass moves the weights on."""
    w1, w2 = _run(tiny_ckpt, tmp_path, 6, iters=1)[2], _run(tiny_ckpt, tmp_path, 6, 1, epochs=2)[2]
    assert (len(w1), len(w2)) == (2, 4)
    for a, b in zip(w1[1], w2[1], strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(w2[1], w2[3], strict=True))


def _run(tiny_ckpt, tmp_path, micro: int, iters: int = 2, epochs: int = 1):
    """Metric lines, the gradient of every optimizer step and the weights after each."""
    # test_red (smooth): the second iteration's rollouts come from the slightly different
    # weights of the two runs, and a JPEG size could jump by a byte on a last-bit pixel change.
    cfg = tiny_config(
        tiny_ckpt,
        "rewards=[{name: test_red}]",
        "sampling.prompts_per_iter=2",
        "sampling.group_size=3",
        "sampling.train_steps=2",
        "optim.updates_per_iter=2",
        f"optim.epochs={epochs}",
        f"optim.micro_batch_size={micro}",
        "optim.lr=1e-3",
    )
    trainer = Trainer(cfg, tmp_path / f"micro{micro}_epochs{epochs}_iters{iters}")
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    grads: list[list[torch.Tensor]] = []
    weights: list[list[torch.Tensor]] = []
    opt = trainer.optimizer
    opt.register_step_pre_hook(lambda *_: grads.append([p.grad.clone() for p in params]))
    opt.register_step_post_hook(lambda *_: weights.append([p.detach().clone() for p in params]))
    lines = [trainer.step() for _ in range(iters)]
    return lines, grads, weights


def _close(key: str, a: float, b: float) -> bool:
    """Tolerances: 1e-6 relative, except for two kinds of float32-noise-level quantities.

    - ``loss/*`` = -mean(A·ρ) with mean(A) ≈ 0: a sum of terms of size 1 in another order, exact
      to ≈1e-7 absolute (the loss itself is ≈1e-7).
    - ``kl/*``, ``check/*`` ∝ |Δμ|² with |Δμ| ≈ 1e-5 after one small step, while a forward pass
      over another batch composition moves μ by ≈1e-9..1e-7 (float32 GEMMs are not batch
      invariant on CPU): 1e-3 relative (measured: ≤ 1e-4), or 1e-12 absolute for the ≈0
      on-policy values.
    """
    if key.startswith("loss/"):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
    if key == "check/onpolicy_ratio_err_max":  # |ρ - 1| at float32 resolution (ulp 6e-8)
        return math.isclose(a, b, abs_tol=2e-7)
    if key.startswith(("kl/", "check/")):
        return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-12)
    if key.startswith(("reward/", "adv/")):  # scores of iteration 2's images, sampled by weights
        return math.isclose(a, b, rel_tol=1e-5)  # that differ in the last bits (see above)
    return math.isclose(a, b, rel_tol=1e-6)


def test_micro_batch_size_does_not_change_the_update(tiny_ckpt, tmp_path) -> None:
    """Mini-batches of 6 pairs as 6 micro-batches of 1 or as one micro-batch of 6: the same
    losses and metrics over two iterations, and the same first gradient and first step (float32
    sums in another order)."""
    lines1, g1, w1 = _run(tiny_ckpt, tmp_path, micro=1)
    lines6, g6, w6 = _run(tiny_ckpt, tmp_path, micro=6)
    for a, b in zip(lines1, lines6, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if not k.startswith("time/"):
                assert _close(k, a[k], b[k]), (k, a[k], b[k])
    assert len(g1) == len(g6) == 4  # 2 iterations × 2 updates
    assert max(float(w.abs().max()) for w in w1[-1]) > 1e-4  # LoRA B starts at 0, moved ≈ 2·lr
    # The first update: the same weights and the same rollouts, so its gradients differ only by
    # summation order. Each entry sums ~200 products (6 pairs × 28 tokens, in another order and
    # GEMM blocking); a float32 sum of n terms errs by ≤ n·u·Σ|terms| (u = 2^-24 = 6e-8): ≈ 1e-5
    # of the terms' scale, for which the tensor's largest gradient stands. A wrong accumulation
    # (a missing 1/6, the last micro-batch only) is off by O(1).
    for a, b in zip(g1[0], g6[0], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * float(a.abs().max()))
    # Weights after it: AdamW's first step is lr·g/(|g| + ε) (ε = 1e-8), of slope lr·ε/(|g| + ε)²
    # in g: 2.5e4 at |g| = ε, where a 1e-11 difference in g moves the weight by 2.5e-7. From then
    # on the two runs' weights differ by that much and their later gradients with them, which is
    # why later steps are compared through the metrics only.
    lr, eps = 1e-3, 1e-8
    for g, a, b in zip(g1[0], w1[0], w6[0], strict=True):
        dg = 1e-5 * float(g.abs().max())
        bound = lr * eps * dg / (g.abs() + eps) ** 2 + 1e-9  # + the weights' float32 rounding
        assert ((a - b).abs() <= bound).all(), float(((a - b).abs() - bound).max())
    assert len(w1) == len(w6) == 4


def test_learning_rate_constant_and_cosine_against_closed_form() -> None:
    cfg = RunConfig()
    cfg.optim.lr, cfg.train.max_iters = 1e-3, 100
    cfg.optim.lr_schedule = "constant"
    assert [learning_rate(cfg, i) for i in (0, 50, 99, 500)] == [1e-3] * 4
    cfg.optim.lr_schedule, cfg.optim.lr_final_frac = "cosine", 0.1
    assert learning_rate(cfg, 0) == 1e-3
    assert math.isclose(learning_rate(cfg, 50), 1e-3 * (0.1 + 0.9 * 0.5))  # cos(π/2) = 0
    assert math.isclose(learning_rate(cfg, 25), 1e-3 * (0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2))
    assert math.isclose(learning_rate(cfg, 100), 1e-4)
    assert learning_rate(cfg, 400) == learning_rate(cfg, 100)  # held beyond the horizon
    cfg.optim.lr_schedule = "linear"  # set in code, past the loader's check of `choices`
    with pytest.raises(ValueError, match=r"optim\.lr_schedule"):
        learning_rate(cfg, 0)
