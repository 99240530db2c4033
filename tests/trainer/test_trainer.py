"""The training loop of ``flowdppo.trainer.trainer`` on a tiny random Shapes model (CPU, float32).

What a run must write (metrics per iteration, eval lines, grids, TensorBoard, checkpoints, a
config that loads back), the on-policy invariant of docs/algorithm.md §6 for every sampler, which
weights train (LoRA only; all of the flow network with the frozen reference untouched), and
exact resumption: 2 + 2 iterations with a restart equal 4 uninterrupted ones, bit for bit.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from flowdppo.config import load_config
from flowdppo.trainer.trainer import Trainer, flat_group_fraction
from flowdppo.trainer.update import learning_rate

from .tiny import read_lines, register_test_rewards, tiny_config, without_time

COMMON_KEYS = {
    "iter",
    "reward/mean",
    "reward/jpeg_incompressibility",
    "kl/old_new_mean",
    "kl/old_new_max",
    "kl/ref_mean",
    "ratio/mean",
    "check/onpolicy_kl_max",
    "time/rollout_s",
    "time/reward_s",
    "time/train_s",
}


@pytest.mark.parametrize(
    ("loss", "sampler", "loss_key"),
    [
        ("flow_dppo", "flow_sde", "mask/frac"),
        ("ratio_clip", "cps", "clip/frac"),
    ],
)
def test_run_writes_metrics_eval_samples_tensorboard_checkpoints(
    tiny_ckpt, tmp_path, loss, sampler, loss_key
) -> None:
    pool = "sampling.train_pool=[0.0,0.75]"  # cps: its last step (σ' = 0, std 0) is not trainable
    cfg = tiny_config(
        tiny_ckpt, pool, f"loss.name={loss}", f"sampling.sampler={sampler}", "eval.every=2"
    )
    run = tmp_path / "run"
    Trainer(cfg, run).train(3, progress=False)

    train = read_lines(run, "train")
    assert [r["iter"] for r in train] == [1, 2, 3]
    for row in train:
        assert COMMON_KEYS | {loss_key} <= set(row), sorted(COMMON_KEYS | {loss_key} - set(row))
        assert row["check/onpolicy_kl_max"] <= 1e-9
    assert train[0]["kl/ref_mean"] == 0.0  # iteration 1 samples from the base model (LoRA B = 0)
    assert train[-1]["kl/ref_mean"] > 0.0  # the policy has moved away from it since
    assert [r["iter"] for r in read_lines(run, "eval")] == [0, 2, 3]  # start, every 2, end
    assert {p.name for p in (run / "samples").glob("*.png")} == {
        f"iter_{i:06d}.png" for i in (0, 2, 3)
    }
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "latest").read_text() == "iter_000003"
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*")) == [
        "iter_000002",
        "iter_000003",
    ]  # keep 2
    assert load_config(run / "config.yaml") == cfg


@pytest.mark.parametrize(
    ("sampler", "precision"),
    [("flow_sde", "full"), ("flow_sde", "reduced"), ("cps", "full"), ("dance_sde", "full")],
)
def test_on_policy_check_holds_every_iteration(tiny_ckpt, tmp_path, sampler, precision) -> None:
    """Before the first update of an iteration the recomputed step equals the stored one:
    KL(old‖new) ≤ 1e-9 and ρ = 1 to float32 precision, although the update's micro-batches
    (pairs of mixed samples and steps) differ from the rollout's forward batches."""
    pool = "sampling.train_pool=[0.0,0.75]"  # cps: its last step (σ' = 0, std 0) is not trainable
    cfg = tiny_config(
        tiny_ckpt,
        pool,
        f"sampling.sampler={sampler}",
        "optim.micro_batch_size=3",
        "sampling.batch_size=2",
        f"sampling.untrained_precision={precision}",  # reduced: untrained steps in bfloat16
    )
    trainer = Trainer(cfg, tmp_path / "run")
    for _ in range(3):
        m = trainer.step()
        assert m["check/onpolicy_kl_max"] <= 1e-9, m
        assert m["check/onpolicy_ratio_err_max"] <= 1e-5, m
    assert m["kl/old_new_max"] > 1e-7  # not vacuous: the later updates move the policy 100x more


def _base_and_trainable(policy) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    named = dict(policy.model.named_parameters())
    base = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
    train = {n: p.detach().clone() for n, p in named.items() if p.requires_grad}
    return base, train


def test_lora_run_changes_only_lora_weights(tiny_ckpt, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_ckpt), tmp_path / "run")
    base0, lora0 = _base_and_trainable(trainer.policy)
    assert lora0 and all(".lora_" in n for n in lora0)
    for _ in range(2):
        trainer.step()
    base1, lora1 = _base_and_trainable(trainer.policy)
    assert base1.keys() == base0.keys()
    assert all(torch.equal(base0[n], base1[n]) for n in base0)  # bitwise
    assert any(not torch.equal(lora0[n], lora1[n]) for n in lora0 if ".lora_B." in n)


def test_full_finetune_changes_base_weights_and_keeps_the_reference(tiny_ckpt, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_ckpt, "model.full_finetune=true"), tmp_path / "run")
    policy = trainer.policy
    ref0 = {n: p.detach().clone() for n, p in policy._ref.named_parameters()}
    net0 = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    assert not any(".lora_" in n for n in net0)
    assert not any(p.requires_grad for p in policy._ref.parameters())
    for _ in range(2):
        m = trainer.step()
    net1 = dict(policy.model.named_parameters())
    changed = {n for n in net0 if not torch.equal(net0[n], net1[n].detach())}
    assert {"head_out.weight", "blocks.0.qkv.weight"} <= changed
    assert not any(n.startswith("text.") for n in changed)  # the text encoder stays frozen
    assert all(torch.equal(ref0[n], p) for n, p in policy._ref.named_parameters())
    assert m["kl/ref_mean"] > 0.0  # KL to the (unchanged) reference grows as the policy moves


def test_kl_to_reference_is_logged_every_kl_ref_every_iterations_with_beta_0(
    tiny_ckpt, tmp_path
) -> None:
    """β = 0, ``train.kl_ref_every=2``: kl/ref_mean and kl/ref_max on lines 1 and 3 only (absent,
    not 0, on line 2); the updates of line 2 run without μ_ref and stay on-policy. β > 0 logs
    them every iteration whatever ``kl_ref_every`` says (the penalty needs μ_ref)."""
    trainer = Trainer(tiny_config(tiny_ckpt, "train.kl_ref_every=2"), tmp_path / "a")
    trainer.train(3, progress=False)
    train = read_lines(tmp_path / "a", "train")
    assert [("kl/ref_mean" in r, "kl/ref_max" in r) for r in train] == [
        (True, True),
        (False, False),
        (True, True),
    ]
    assert all(r["check/onpolicy_kl_max"] <= 1e-9 for r in train)
    assert train[2]["kl/ref_mean"] > 0.0
    cfg = tiny_config(tiny_ckpt, "train.kl_ref_every=0", "loss.beta=1e-3")
    Trainer(cfg, tmp_path / "b").train(2, progress=False)
    assert all("kl/ref_mean" in r for r in read_lines(tmp_path / "b", "train"))


def _trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.policy.trainable_state_dict().items()}


def test_resume_is_exact_with_ema(tiny_ckpt, tmp_path) -> None:
    """4 iterations in one go == 2 iterations, then a new Trainer resuming to 4: every metric
    line (bar wall-clock times) and the final trainable and EMA weights, bitwise; with a cosine
    learning rate, which needs no scheduler state to resume."""
    cfg = tiny_config(
        tiny_ckpt,
        "optim.ema_decay=0.9",
        "eval.every=2",
        "train.save_every=2",
        "optim.lr_schedule=cosine",
        "train.max_iters=4",
    )
    a, b = tmp_path / "a", tmp_path / "b"
    ta = Trainer(cfg, a)
    ta.train(4, progress=False)
    Trainer(cfg, b).train(2, progress=False)
    tb = Trainer(cfg, b, resume=True)
    assert tb.iteration == 2
    tb.train(4, progress=False)

    lines_a, lines_b = read_lines(a, None), read_lines(b, None)
    assert len(lines_a) == 4 + 3  # 4 train lines, eval at 0, 2, 4
    assert without_time(lines_a) == without_time(lines_b)
    lrs = [line["train/lr"] for line in lines_b if "train/lr" in line]
    assert lrs == [learning_rate(cfg, i) for i in range(4)] and lrs[0] > lrs[1] > lrs[2] > lrs[3]
    wa, wb = _trainable(ta), _trainable(tb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(ta.ema.shadow[k], tb.ema.shadow[k]) for k in wa)
    assert not all(torch.equal(ta.ema.shadow[k], wa[k]) for k in wa)  # the EMA is a separate state


def test_resume_ignores_a_stale_temporary_checkpoint(tiny_ckpt, tmp_path) -> None:
    """A crash while writing leaves ``.tmp_iter_*``: resuming uses the last complete checkpoint,
    and the next save of that iteration replaces the stale folder."""
    cfg = tiny_config(tiny_ckpt)
    run = tmp_path / "run"
    Trainer(cfg, run).train(1, progress=False)
    stale = run / "checkpoints" / ".tmp_iter_000002"
    shutil.copytree(run / "checkpoints" / "iter_000001", stale)
    (stale / "trainable.safetensors").write_bytes(b"truncated")
    trainer = Trainer(cfg, run, resume=True)
    assert trainer.iteration == 1
    trainer.train(2, progress=False)
    assert not stale.exists()
    assert (run / "checkpoints" / "latest").read_text() == "iter_000002"
    assert [r["iter"] for r in read_lines(run)] == [1, 2]


def test_resume_without_checkpoint_is_an_error(tiny_ckpt, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny_config(tiny_ckpt), tmp_path / "empty", resume=True)


def test_drop_policy_survives_a_forward_batch_that_fails_entirely(tiny_ckpt, tmp_path) -> None:
    """reward_on_error: drop. One forward batch (one group here) fails as a whole: its samples
    are dropped (A = 0) and the iteration goes on; only a fully dropped global batch is fatal."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    cfg = tiny_config(
        tiny_ckpt,
        f"data.train_prompts={prompts}",
        "data.balance_key=null",
        "reward_on_error=drop",
        "rewards=[{name: test_fails_on_squares}]",
        "sampling.batch_size=2",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    m = trainer.step()
    assert m["reward/dropped"] == 2.0  # the two samples of "two blue squares"
    assert m["adv/abs_mean"] > 0.5 and math.isfinite(m["loss/policy"])
    cfg = tiny_config(
        tiny_ckpt,
        "data.train_prompts=shapes:train:counting",
        "reward_on_error=drop",
        "rewards=[{name: test_fails_on_squares}]",
        "sampling.batch_size=2",
    )
    trainer = Trainer(cfg, tmp_path / "run2")
    trainer.prompts = ["two blue squares"] * len(trainer.prompts)
    with pytest.raises(RuntimeError, match="every sample of the global batch was dropped"):
        trainer.step()


def test_max_minutes_stops_after_the_crossing_iteration_with_eval_and_checkpoint(
    tiny_ckpt, tmp_path
) -> None:
    # A budget of ~0 s: the first iteration crosses it; the run then ends as at max_iters.
    cfg = tiny_config(tiny_ckpt, "train.max_minutes=1e-6", "eval.every=10")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train(max_iters=5, progress=False)
    assert trainer.iteration == 1
    lines = read_lines(tmp_path / "run", kind=None)
    assert [(r["kind"], r["iter"]) for r in lines] == [("eval", 0), ("train", 1), ("eval", 1)]
    assert (tmp_path / "run" / "checkpoints" / "iter_000001").is_dir()


def test_flat_group_fraction_by_hand() -> None:
    """Groups of 3: all equal (flat); one differs; all equal among the valid ones (the dropped
    sample ignored); all dropped. Valid samples 3 + 3 + 2 = 8, flat 3 + 2 = 5."""
    total = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.7, 0.2, 0.9, 0.2, 1.0, 2.0, 3.0])
    valid = torch.tensor([True] * 7 + [False, True] + [False] * 3)
    assert flat_group_fraction(total, valid, 3) == pytest.approx(5 / 8)
    assert flat_group_fraction(torch.arange(6.0), torch.ones(6, dtype=torch.bool), 2) == 0.0


def test_per_category_reward_by_hand(tiny_ckpt, tmp_path) -> None:
    """``reward_category/<c>`` = the mean reward of that category's samples (a recomputation)."""
    cfg = tiny_config(
        tiny_ckpt,
        "sampling.prompts_per_iter=4",
        "sampling.batch_size=8",
        "rewards=[{name: test_red}]",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    exp = trainer.rollout(0)
    m = trainer.advantages(exp)
    r = exp.rewards.matrix()[:, 0]
    cats = [md["category"] for md in exp.metadata]
    assert len(set(cats)) >= 2 and len(set(r.tolist())) > 2  # the check below can tell them apart
    for c in set(cats):
        mine = [float(x) for x, k in zip(r, cats, strict=True) if k == c]
        assert m[f"reward_category/{c}"] == pytest.approx(sum(mine) / len(mine), abs=1e-6)
    assert sorted(k for k in m if k.startswith("reward_category/")) == sorted(
        f"reward_category/{c}" for c in set(cats)
    )
    assert m["adv/zero_frac"] == 0.0  # a continuous reward: no group is flat


def test_compiled_run_matches_eager_and_keeps_its_checkpoint_format(tiny_ckpt, tmp_path) -> None:
    """``model.compile`` compiles the network in place: the on-policy check still holds (the
    rollout and the update run the same compiled code), the metrics follow the eager run's to
    float32 rounding, and the checkpoint's keys are the eager run's, so either resumes the other.
    """
    register_test_rewards()  # smooth: a JPEG size can jump a byte on a last-bit pixel change
    extra = (
        "sampling.untrained_precision=reduced",
        "rewards=[{name: test_red}]",
        "train.save_every=2",
    )
    eager, compiled = (
        Trainer(tiny_config(tiny_ckpt, *extra, f"model.compile={c}"), tmp_path / name)
        for c, name in ((False, "eager"), (True, "compiled"))
    )
    assert compiled.policy.model._compiled_call_impl is not None
    assert eager.policy.model._compiled_call_impl is None
    eager.train(2, progress=False)
    compiled.train(2, progress=False)
    rows_e, rows_c = read_lines(tmp_path / "eager"), read_lines(tmp_path / "compiled")
    for re_, rc in zip(rows_e, rows_c, strict=True):
        assert rc["check/onpolicy_kl_max"] <= 1e-9
        # loss/policy is a mean of terms of size |A| ~ 1 that cancel to ~1e-6: absolute tolerance
        for k, rel, abs_ in (
            ("reward/mean", 1e-4, 0.0),
            ("kl/old_new_mean", 1e-2, 1e-12),
            ("kl/ref_mean", 1e-2, 1e-12),
            ("loss/policy", 0.0, 1e-6),
        ):
            assert math.isclose(rc[k], re_[k], rel_tol=rel, abs_tol=abs_), (k, rc[k], re_[k])
    we, wc = _trainable(eager), _trainable(compiled)
    assert we.keys() == wc.keys()
    assert all(torch.allclose(we[k], wc[k], rtol=1e-3, atol=1e-6) for k in we)
    resumed = Trainer(tiny_config(tiny_ckpt, *extra), tmp_path / "compiled", resume=True)
    assert resumed.iteration == 2
    assert all(torch.equal(v, wc[k]) for k, v in _trainable(resumed).items())


def test_compile_on_a_machine_where_it_cannot_work_is_a_clear_error(
    tiny_ckpt, tmp_path, monkeypatch
) -> None:
    def no_compiler(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("Failed to find C++ compiler. Please specify via CXX.\nmore")

        return run

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.raises(ValueError, match=r"model\.compile: .*Failed to find C\+\+ compiler") as e:
        Trainer(tiny_config(tiny_ckpt, "model.compile=true"), tmp_path / "run")
    assert "model.compile=false" in str(e.value) and "more" not in str(e.value)
