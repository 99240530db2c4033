"""``flowdppo.trainer.experience``: per-sample noise makes a sample independent of how the
batch is cut into forward passes; the stored tuple of docs/algorithm.md §3 and the reference means."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from flowdppo.trainer.build import build_policy, build_run_rewards
from flowdppo.trainer.experience import collect, kl_to_reference, sample_noise

from .tiny import tiny_config

PROMPTS = ["a red circle", "a red circle", "two blue squares", "two blue squares"]


def _collect(tiny_ckpt, batch_size: int, ids=(0, 1, 2, 3), *extra: str):
    cfg = tiny_config(
        tiny_ckpt, f"sampling.batch_size={batch_size}", "rewards=[{name: test_red}]", *extra
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, torch.device("cpu"))
    with ThreadPoolExecutor(1) as pool:
        return collect(
            policy, cfg, PROMPTS, [{}] * 4, list(ids), 3, [0, 2], build_run_rewards(cfg), pool
        )


def test_sample_noise_is_a_function_of_seed_iteration_and_sample() -> None:
    z0, zk = sample_noise(7, 3, 5, (3, 4, 4), k=2)
    assert z0.shape == (3, 4, 4) and zk.shape == (2, 3, 4, 4)
    again = sample_noise(7, 3, 5, (3, 4, 4), k=2)
    assert torch.equal(z0, again[0]) and torch.equal(zk, again[1])
    for other in (
        sample_noise(8, 3, 5, (3, 4, 4), 2),
        sample_noise(7, 4, 5, (3, 4, 4), 2),
        sample_noise(7, 3, 6, (3, 4, 4), 2),
    ):
        assert not torch.equal(z0, other[0])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_forward_batch_size_does_not_change_the_samples(tiny_ckpt, batch_size) -> None:
    """sampling.batch_size 1 or 3 vs all 4 at once: the same samples, to float32 GEMM noise
    (CPU kernels are not batch invariant: ≈5e-7 on latents in [-1, 1]); same rewards."""
    whole, split = _collect(tiny_ckpt, 4), _collect(tiny_ckpt, batch_size)
    for name in ("x", "x_next", "mean", "mean_ref", "std", "log_prob", "images"):
        torch.testing.assert_close(
            getattr(split, name), getattr(whole, name), rtol=0, atol=2e-6, msg=name
        )
    torch.testing.assert_close(split.rewards.matrix(), whole.rewards.matrix(), rtol=0, atol=1e-6)
    assert not torch.allclose(whole.images[0], whole.images[1], atol=1e-2)  # same prompt, own noise


def test_experience_holds_the_trained_steps_tuple(tiny_ckpt) -> None:
    exp = _collect(tiny_ckpt, 4, ids=(4, 5, 6, 7))
    assert (
        exp.x.shape == exp.x_next.shape == exp.mean.shape == exp.mean_ref.shape == (4, 2, 3, 32, 32)
    )
    assert exp.std.shape == exp.log_prob.shape == (4, 2)
    assert exp.step_index.tolist() == [0, 2]
    assert exp.group_ids.tolist() == [2, 2, 3, 3]  # G = 2: sample j belongs to prompt j // 2
    assert exp.images.shape == (4, 3, 32, 32) and exp.images.min() >= 0 and exp.images.max() <= 1
    assert set(exp.timings) == {"time/rollout_s", "time/reward_s", "time/reward_wait_s"}
    # LoRA B = 0: the policy is the reference, bit for bit, so KL(π_old ‖ π_ref) = 0 exactly.
    assert torch.equal(exp.mean, exp.mean_ref)
    assert torch.equal(kl_to_reference(exp, "mean"), torch.zeros(4, 2))


def test_shared_initial_noise_is_per_group_and_step_noise_per_sample() -> None:
    a0, ak = sample_noise(7, 3, 4, (3, 4, 4), 2, group_id=2)
    b0, bk = sample_noise(7, 3, 5, (3, 4, 4), 2, group_id=2)
    c0, _ = sample_noise(7, 3, 6, (3, 4, 4), 2, group_id=3)
    assert torch.equal(a0, b0) and not torch.equal(a0, c0)
    assert not torch.equal(ak, bk)
    own0, ownk = sample_noise(7, 3, 4, (3, 4, 4), 2)
    assert torch.equal(ak, ownk)  # step noise: the sample's own
    assert not torch.equal(a0, own0)  # the group's initial noise is a stream of its own


def test_shared_initial_noise_in_a_rollout(tiny_ckpt) -> None:
    """G = 2: samples 0 and 1 (one prompt) start from the same noise, so they agree before the
    first trained step (step 0 here, so x_0 is equal) and differ after it."""
    exp = _collect(tiny_ckpt, 4, (0, 1, 2, 3), "sampling.shared_initial_noise=true")
    assert torch.equal(exp.x[0, 0], exp.x[1, 0]) and torch.equal(exp.x[2, 0], exp.x[3, 0])
    assert not torch.equal(exp.x[0, 0], exp.x[2, 0])
    assert not torch.allclose(exp.x_next[0, 0], exp.x_next[1, 0], atol=1e-3)


def test_reduced_precision_acts_on_untrained_steps_only(tiny_ckpt) -> None:
    """``sampling.untrained_precision=reduced``: trained steps 0 and 2 of 3 stay float32 (the
    stored means equal the float32 reference recompute bit for bit, as with full precision),
    the untrained step 1 runs the bfloat16 blocks (the state entering step 2 changes)."""
    full = _collect(tiny_ckpt, 4, (0, 1, 2, 3), "sampling.untrained_precision=full")
    reduced = _collect(tiny_ckpt, 4, (0, 1, 2, 3), "sampling.untrained_precision=reduced")
    assert torch.equal(full.x[:, 0], reduced.x[:, 0])  # nothing before step 0
    assert not torch.equal(full.x[:, 1], reduced.x[:, 1])  # step 1 ran in reduced precision
    torch.testing.assert_close(full.x[:, 1], reduced.x[:, 1], atol=0.05, rtol=0)  # but close
    assert torch.equal(reduced.mean, reduced.mean_ref)  # LoRA B = 0: float32 on trained steps
    assert torch.equal(kl_to_reference(reduced, "mean"), torch.zeros(4, 2))


def test_untrained_precision_auto_follows_the_bfloat16_kernels(monkeypatch) -> None:
    """auto asks oneDNN on a CPU; FLOWDPPO_FORCE_BF16_KERNELS=1|0 answers in its place (so each
    resolution runs on any machine); full and reduced ignore both."""
    from flowdppo.config.schema import SamplingConfig
    from flowdppo.trainer.experience import use_reduced_precision

    cpu = torch.device("cpu")
    auto = SamplingConfig(untrained_precision="auto")
    monkeypatch.delenv("FLOWDPPO_FORCE_BF16_KERNELS", raising=False)
    assert use_reduced_precision(auto, cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    for forced, expected in (("1", True), ("0", False)):
        monkeypatch.setenv("FLOWDPPO_FORCE_BF16_KERNELS", forced)
        assert use_reduced_precision(auto, cpu) is expected
        assert not use_reduced_precision(SamplingConfig(untrained_precision="full"), cpu)
        assert use_reduced_precision(SamplingConfig(untrained_precision="reduced"), cpu)
    monkeypatch.setenv("FLOWDPPO_FORCE_BF16_KERNELS", "yes")
    with pytest.raises(ValueError, match="FLOWDPPO_FORCE_BF16_KERNELS='yes': expected 0, 1"):
        use_reduced_precision(auto, cpu)


@pytest.mark.parametrize("forced, means", [("1", "reduced"), ("0", "full")])
def test_auto_rollouts_are_those_of_the_precision_it_resolves_to(
    tiny_ckpt, monkeypatch, forced, means
) -> None:
    """Each resolution of auto, forced on this machine, samples exactly what naming it does."""
    monkeypatch.setenv("FLOWDPPO_FORCE_BF16_KERNELS", forced)
    auto = _collect(tiny_ckpt, 4, (0, 1, 2, 3), "sampling.untrained_precision=auto")
    named = _collect(tiny_ckpt, 4, (0, 1, 2, 3), f"sampling.untrained_precision={means}")
    assert torch.equal(auto.x, named.x) and torch.equal(auto.images, named.images)


def _count_forwards(tiny_ckpt, iteration: int, *extra: str) -> tuple[object, list[int]]:
    """Collect 4 samples in 2 forward batches of 2 (T = 4 steps, K = 2 trained) at
    ``iteration``; returns the experience and the batch size of every network forward call."""
    cfg = tiny_config(
        tiny_ckpt,
        "sampling.batch_size=2",
        "sampling.guidance_scale=3.0",
        "rewards=[{name: test_red}]",
        *extra,
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, torch.device("cpu"))
    calls: list[int] = []
    hook = policy.model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        with ThreadPoolExecutor(1) as pool:
            exp = collect(
                policy,
                cfg,
                PROMPTS,
                [{}] * 4,
                [0, 1, 2, 3],
                iteration,
                [0, 2],
                build_run_rewards(cfg),
                pool,
            )
    finally:
        hook.remove()
    return exp, calls


@pytest.mark.parametrize(
    ("iteration", "extra", "reference"),
    [
        (3, ("loss.beta=0", "train.kl_ref_every=10"), False),  # not a monitor iteration
        (3, ("loss.beta=0", "train.kl_ref_every=0"), False),  # never
        (10, ("loss.beta=0", "train.kl_ref_every=10"), True),  # a monitor iteration
        (3, ("loss.beta=1e-3", "train.kl_ref_every=0"), True),  # the penalty needs μ_ref
    ],
)
def test_rollout_makes_T_forwards_per_batch_plus_K_only_for_the_reference(
    tiny_ckpt, iteration, extra, reference
) -> None:
    """CFG is batched (one call on [2b] latents: conditional and null prompt), so a forward
    batch costs exactly T = 4 network calls, plus K = 2 with the adapter off when the reference
    pass runs (β > 0, or a ``train.kl_ref_every`` iteration)."""
    exp, calls = _count_forwards(tiny_ckpt, iteration, *extra)
    assert calls == [4] * ((4 + 2) if reference else 4) * 2  # 2 forward batches of b = 2: [2b]
    assert (exp.mean_ref is not None) == reference
    kl = kl_to_reference(exp, "mean")
    assert (kl is None) == (not reference)
    if reference:
        assert exp.mean_ref.shape == exp.mean.shape
