"""Progress of the evaluations (a bar over their denoising steps, with an ETA) and of training
(an ETA from the iterations' times alone, evaluations excluded)."""

from __future__ import annotations

import io
import re
import time

import pytest
import torch

from flowdppo.trainer import trainer as trainer_module
from flowdppo.trainer.build import build_policy, build_run_rewards
from flowdppo.trainer.evaluation import evaluate
from flowdppo.trainer.sampling import counted, generate, step_progress

from .tiny import tiny_config


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def eval_setup(tiny_ckpt, tmp_path):
    prompts = tmp_path / "eval.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle\n")
    cfg = tiny_config(tiny_ckpt, f"data.eval_prompts={prompts}", "eval.kl_samples=5")
    return cfg, build_policy(cfg, torch.device("cpu")), build_run_rewards(cfg)


def test_the_evaluation_bar_counts_every_denoising_step_it_announced(eval_setup) -> None:
    """A step is one velocity call on a batch: 3 prompts in one batch × 4 ODE steps, then
    eval/kl_base: 5 samples in batches of 4 (2 batches), each 4 rollout steps and 4 steps of the
    base (train_pool [0, 1] of 4 steps): 4 + 2 × 8 = 20."""
    cfg, policy, rewards = eval_setup
    term = Terminal()
    with step_progress("eval 0", True, file=term) as bar:
        plain = evaluate(policy, cfg, rewards)
        assert bar.n == bar.total == 1 * 4 + 2 * (4 + 4)
    shown = term.getvalue()
    assert re.search(r"eval 0: +\d+%.*\d+/20 \[\d\d:\d\d<\d\d:\d\d", shown)  # its ETA after <
    assert evaluate(policy, cfg, rewards) == plain  # the counting changes nothing computed


def test_the_bar_is_off_with_no_progress_or_off_a_terminal(eval_setup) -> None:
    _, policy, _ = eval_setup
    for enabled, file in ((False, Terminal()), (True, io.StringIO())):
        with step_progress("eval 0", enabled, file=file) as bar:
            generate(policy, ["a red circle"], steps=4, guidance_scale=1.0, seed=0)
        assert bar.disable and file.getvalue() == ""


def test_counted_is_the_function_itself_without_a_bar() -> None:
    def f(x):
        return x

    assert counted(f, 10) is f
    with step_progress("x", False) as bar:
        assert counted(f, 10) is not f and bar.total == 10


def test_the_training_eta_leaves_the_evaluations_out(tiny_ckpt, tmp_path, monkeypatch) -> None:
    """Evaluations (here: 1 s each, at iterations 0 and 2) stop the training bar's clock: its
    elapsed time, the base of its rate and ETA, is the iterations' alone."""
    sleep = 1.0
    bars = []

    class Recorded(trainer_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": Terminal()})
            bars.append(self)

        def close(self):
            self.elapsed_at_close = self._time() - self.start_t
            super().close()

    def slow_eval(self, grid=True):
        time.sleep(sleep)
        return {}

    monkeypatch.setattr(trainer_module, "tqdm", Recorded)
    monkeypatch.setattr(trainer_module.Trainer, "evaluate", slow_eval)
    trainer = trainer_module.Trainer(tiny_config(tiny_ckpt, "eval.every=2"), tmp_path / "run")
    t0 = time.perf_counter()
    trainer.train(2, progress=True)
    wall = time.perf_counter() - t0
    (bar,) = bars
    assert bar.n == 2
    assert bar.elapsed_at_close <= wall - 2 * sleep


def test_no_progress_turns_the_training_bar_off(tiny_ckpt, tmp_path, capsys) -> None:
    from flowdppo.cli import main

    from .tiny import tiny_overrides

    sets = [a for s in tiny_overrides(tiny_ckpt) for a in ("--set", s)]
    for flag, shown in (("--no-progress", False), (None, True)):
        out = tmp_path / f"run_{shown}"
        argv = ["train", "--out", str(out), *sets, "--max-iters", "1"]
        assert main(argv + ([flag] if flag else [])) == 0
        assert ("train: 100%" in capsys.readouterr().err) == shown
