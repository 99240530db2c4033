"""Numerical faults (docs/reliability.md): a NaN/inf advantage, loss or gradient skips its
optimizer update, counted in ``fault/skipped_updates``, leaving weights and optimizer state as
they were; ``train.max_skipped_updates`` of them stop the run with a checkpoint of finite
weights; an optimizer step that makes the weights non-finite (an infinite lr) stops the run
before anything is saved."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from flowdppo.trainer.trainer import NonFiniteError, Trainer
from flowdppo.trainer.update import _check_weights

from .tiny import read_lines, tiny_config


def _state(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainable weights, optimizer tensors), cloned."""
    w = {k: v.detach().clone() for k, v in trainer.policy.trainable_state_dict().items()}
    opt = {
        f"{pid}.{k}": v.clone()
        for pid, entry in trainer.optimizer.state_dict()["state"].items()
        for k, v in entry.items()
        if isinstance(v, torch.Tensor)
    }
    return w, opt


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def _nan_advantages(monkeypatch) -> None:
    import flowdppo.trainer.trainer as tr

    real = tr.group_advantages
    monkeypatch.setattr(tr, "group_advantages", lambda *a, **k: real(*a, **k) * float("nan"))


def test_nan_advantages_skip_every_update_of_the_iteration(tiny_ckpt, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tiny_ckpt), tmp_path / "run")
    assert trainer.step()["fault/skipped_updates"] == 0.0
    before = _state(trainer)
    with monkeypatch.context() as m:
        _nan_advantages(m)
        with pytest.warns(UserWarning) as caught:
            metrics = trainer.step()
    assert [str(w.message).split(" (")[0] for w in caught] == [
        f"iteration 1: non-finite advantages; optimizer step {u} of 2 skipped" for u in (1, 2)
    ]
    assert metrics["fault/skipped_updates"] == 2.0 and metrics["train/skipped_frac"] == 1.0
    after = _state(trainer)
    assert _same(before[0], after[0]) and _same(before[1], after[1])
    assert trainer.step()["fault/skipped_updates"] == 0.0  # the next iteration updates again
    assert not _same(before[0], _state(trainer)[0])


def test_a_nan_loss_skips_only_its_update(tiny_ckpt, tmp_path, monkeypatch) -> None:
    """One micro-batch per update here (4 pairs, micro_batch_size 4): a NaN loss in the first
    skips update 1 of 2; update 2 runs."""
    import flowdppo.trainer.update as up

    trainer = Trainer(tiny_config(tiny_ckpt), tmp_path / "run")
    before = _state(trainer)
    calls = []
    real = up.compute_loss

    def nan_first(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if len(calls) == 1 else out

    monkeypatch.setattr(up, "compute_loss", nan_first)
    with pytest.warns(UserWarning, match="non-finite loss; optimizer step 1 of 2 skipped"):
        metrics = trainer.step()
    assert len(calls) == 2
    assert metrics["fault/skipped_updates"] == 1.0 and metrics["train/skipped_frac"] == 0.5
    after = _state(trainer)
    assert not _same(before[0], after[0]) and _all_finite(after[0]) and _all_finite(after[1])


def test_an_infinite_gradient_skips_the_update(tiny_ckpt, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_ckpt), tmp_path / "run")
    trainer.step()
    before = _state(trainer)
    p = next(iter(trainer.policy.trainable_parameters()))
    hook = p.register_hook(lambda g: g + float("inf"))
    with pytest.warns(UserWarning, match="non-finite loss or gradient norm"):
        metrics = trainer.step()
    hook.remove()
    assert metrics["fault/skipped_updates"] == 2.0
    assert math.isnan(metrics["train/grad_norm"]) or metrics["train/grad_norm"] == 0.0
    after = _state(trainer)
    assert _same(before[0], after[0]) and _same(before[1], after[1])


def test_too_many_skipped_updates_stop_the_run_with_a_finite_checkpoint(
    tiny_ckpt, tmp_path, monkeypatch
) -> None:
    """2 updates per iteration, all skipped, train.max_skipped_updates=3: the run stops after
    iteration 2 (4 skipped), saving it, with a one-line error naming the field."""
    from safetensors.torch import load_file

    cfg = tiny_config(tiny_ckpt, "train.max_skipped_updates=3", "train.save_every=100")
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    w0 = _state(trainer)[0]
    _nan_advantages(monkeypatch)
    with (
        pytest.warns(UserWarning, match="non-finite advantages"),
        pytest.raises(NonFiniteError, match=r"4 optimizer updates .*max_skipped_updates=3"),
    ):
        trainer.train(10, progress=False)
    assert (run / "checkpoints" / "latest").read_text() == "iter_000002"
    saved = load_file(str(run / "checkpoints" / "iter_000002" / "trainable.safetensors"))
    assert _same(saved, w0)  # nothing was applied, and nothing non-finite saved
    assert [r["fault/skipped_updates"] for r in read_lines(run)] == [2.0, 2.0]


def test_max_skipped_updates_0_never_stops(tiny_ckpt, tmp_path, monkeypatch) -> None:
    cfg = tiny_config(tiny_ckpt, "train.max_skipped_updates=0", "train.save_every=100")
    _nan_advantages(monkeypatch)
    with pytest.warns(UserWarning, match="non-finite advantages"):
        Trainer(cfg, tmp_path / "run").train(3, progress=False)
    assert [r["fault/skipped_updates"] for r in read_lines(tmp_path / "run")] == [2.0] * 3


def test_an_infinite_lr_stops_before_non_finite_weights_are_used_or_saved(tiny_ckpt, tmp_path):
    """``optim.lr=.inf`` is refused by the config (test_cli_errors); set behind its back, the
    first step makes the weights non-finite: the run stops at once and no checkpoint holds them."""
    from safetensors.torch import load_file

    cfg = tiny_config(tiny_ckpt, "optim.lr_schedule=constant")
    cfg.optim.lr = float("inf")
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="made the trainable weights non-finite"):
        Trainer(cfg, run).train(3, progress=False)
    for ckpt in (run / "checkpoints").glob("iter_*"):
        assert _all_finite(load_file(str(ckpt / "trainable.safetensors")))
    assert not list((run / "checkpoints").glob("iter_*"))


def test_check_weights_names_the_iteration_and_lr() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, float("nan")]))
    with pytest.raises(NonFiniteError, match=r"iteration 7: .* \(lr 0\.5;"):
        _check_weights([p], 7, 0.5)
    _check_weights([torch.nn.Parameter(torch.ones(2))], 7, 0.5)
