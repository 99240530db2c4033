"""The ``flowdppo`` command line end to end, each command in a subprocess, on a tiny random
Shapes checkpoint: train → resume → eval → sample → plot, shapes render, config errors, a
refused --out, and Ctrl-C (exit 130, a checkpoint of the last whole iteration, resumable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer.tiny import (
    build_tiny_checkpoint,
    cli,
    read_lines,
    register_test_rewards,
    tiny_overrides,
)


def _sets(ckpt: Path, *extra: str) -> list[str]:
    return [a for s in tiny_overrides(ckpt, *extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    register_test_rewards()
    return build_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "tiny.safetensors")


@pytest.fixture(scope="module")
def run(ckpt, tmp_path_factory) -> Path:
    """flowdppo train (2 iterations), then flowdppo resume to 3."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = cli("train", "--out", str(out), *_sets(ckpt, "eval.every=2"), "--max-iters", "2")
    assert f"run saved in {out}" in proc.stdout
    assert [r["iter"] for r in read_lines(out)] == [1, 2]
    assert (out / "checkpoints" / "latest").read_text() == "iter_000002"
    cli("resume", str(out), "--max-iters", "3")
    return out


def test_train_then_resume(run) -> None:
    assert [r["iter"] for r in read_lines(run)] == [1, 2, 3]
    assert [r["iter"] for r in read_lines(run, "eval")] == [0, 2, 3]
    assert (run / "checkpoints" / "latest").read_text() == "iter_000003"
    assert (run / "samples" / "iter_000003.png").exists()


def test_resume_in_a_new_process_is_exact(run, ckpt, tmp_path) -> None:
    """The fixture's run (2 iterations, then `flowdppo resume` to 3 in a new process) equals an
    uninterrupted 3-iteration run: every metric line bar wall-clock times, and the weights
    (trainable and optimizer state) of the final checkpoint, bitwise."""
    import torch
    from safetensors.torch import load_file
    from trainer.tiny import without_time

    out = tmp_path / "straight"
    cli("train", "--out", str(out), *_sets(ckpt, "eval.every=2"), "--max-iters", "3")
    assert without_time(read_lines(out, None)) == without_time(read_lines(run, None))
    final = "checkpoints/iter_000003"
    a, b = (
        load_file(str(out / final / "trainable.safetensors")),
        load_file(str(run / final / "trainable.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = (load_file(str(r / final / "optimizer.safetensors")) for r in (out, run))
    assert oa.keys() == ob.keys() and any(k.endswith(".exp_avg_sq") for k in oa)
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


def test_eval(run) -> None:
    proc = cli("eval", "--run", str(run), "--n", "2", "--steps", "4")
    out = run / "eval" / "iter_000003_n2"  # 2 is not the run's eval.per_category (1)
    metrics = json.loads((out / "eval.json").read_text())
    assert 0.0 <= metrics["eval/strict_overall"] <= 1.0
    assert sum(row["n"] for row in metrics["table"]) == 2 * 6  # 2 per category
    assert (out / "eval.md").exists() and (out / "grid.png").exists()
    assert "| **overall** | 12 |" in proc.stdout
    assert "(test prompts)" in proc.stdout


def test_eval_on_the_training_split(run) -> None:
    proc = cli("eval", "--run", str(run), "--n", "2", "--steps", "4", "--split", "train")
    out, test_out = run / "eval" / "iter_000003_train_n2", run / "eval" / "iter_000003_n2"
    assert "(train prompts)" in proc.stdout
    metrics = json.loads((out / "eval.json").read_text())
    assert sum(row["n"] for row in metrics["table"]) == 2 * 6
    if not (test_out / "grid.png").exists():
        cli("eval", "--run", str(run), "--n", "2", "--steps", "4")
    # other prompts under the same seeds: the captioned grids differ
    assert (out / "grid.png").read_bytes() != (test_out / "grid.png").read_bytes()


def test_eval_split_train_is_refused_for_a_prompt_file_run(run, tmp_path) -> None:
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    text = (run / "config.yaml").read_text()
    assert "eval_prompts: shapes:test" in text
    (tmp_path / "config.yaml").write_text(
        text.replace("eval_prompts: shapes:test", f"eval_prompts: {tmp_path / 'prompts.txt'}")
    )
    proc = cli("eval", "--run", str(tmp_path), "--split", "train", check=False)
    assert proc.returncode != 0
    assert "--split train is for Shapes runs" in proc.stderr
    assert str(tmp_path / "config.yaml") in proc.stderr and "prompts.txt" in proc.stderr


def test_eval_of_a_prompt_file_run_takes_n_steps_and_cfg(run, tmp_path) -> None:
    """A run that evaluates a prompt file (its reward, not the Shapes table): --n, --steps and
    --cfg reach the evaluation and name its directory (of the run's iteration 3 checkpoint)."""
    import shutil

    shutil.copytree(run / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\na green triangle\n")
    text = (run / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(
        text.replace("eval_prompts: shapes:test", f"eval_prompts: {tmp_path / 'prompts.txt'}")
    )
    cli("eval", "--run", str(tmp_path), "--n", "2", "--steps", "2", "--cfg", "1.5")
    cli("eval", "--run", str(tmp_path), "--n", "2", "--steps", "2")
    a, b = (tmp_path / "eval" / f"iter_000003_n2_steps2{s}" for s in ("_cfg1.5", ""))
    ma, mb = (json.loads((d / "eval.json").read_text()) for d in (a, b))
    assert {"eval/reward_mean", "eval/jpeg_incompressibility"} <= set(ma)  # and eval/kl_base
    assert not any(k.startswith("eval/strict") for k in ma)  # the reward, not the Shapes table
    assert ma["eval/reward_mean"] != mb["eval/reward_mean"]  # the guidance scale reached it


def test_eval_refuses_a_guidance_scale_below_one(run) -> None:
    proc = cli("eval", "--run", str(run), "--cfg", "0.5", check=False)
    assert proc.returncode != 0 and "--cfg must be >= 1.0" in proc.stderr


def test_eval_settings_name_the_directory(run) -> None:
    """The run's own settings write eval/iter_N; each changed setting adds a suffix, so an
    evaluation with other settings does not overwrite another."""
    cli("eval", "--run", str(run))
    cli("eval", "--run", str(run), "--steps", "2")
    cli("eval", "--run", str(run), "--cfg", "1.5")
    names = {p.name for p in (run / "eval").iterdir()}
    assert {"iter_000003", "iter_000003_steps2", "iter_000003_cfg1.5"} <= names
    for name in ("iter_000003", "iter_000003_steps2", "iter_000003_cfg1.5"):
        assert (run / "eval" / name / "eval.json").exists()
    md = (run / "eval" / "iter_000003_steps2" / "eval.md").read_text()
    assert "ODE 2 steps" in md and "1 samples/category" in md
    own = (run / "eval" / "iter_000003" / "eval.md").read_text()
    md = (run / "eval" / "iter_000003_cfg1.5" / "eval.md").read_text()
    assert "CFG 1.5" in md and "CFG 1.5" not in own


def test_sample(run, tmp_path) -> None:
    cli(
        "sample",
        "--run",
        str(run),
        "--prompt",
        "a red circle",
        "--n",
        "2",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "g.png"),
    )
    assert (tmp_path / "g.png").stat().st_size > 0
    res = cli(
        "sample", "--run", str(run), "--prompt", "a red circle", "--negative-prompt", "blue",
        "--out", str(tmp_path / "n.png"), check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "has no negative prompt" in res.stderr, res.stderr


def test_plot(run, tmp_path) -> None:
    cli("plot", "--run", str(run), "--out", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_shapes_render(tmp_path) -> None:
    cli("shapes", "render", "--prompt", "three red circles", "--out", str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 0


def test_bad_config_key_exits_2_and_names_it(ckpt, tmp_path) -> None:
    proc = cli("train", "--out", str(tmp_path / "x"), *_sets(ckpt, "loss.deltaa=1e-6"), check=False)
    assert proc.returncode == 2
    assert "loss.deltaa" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = cli("train", "--out", str(tmp_path / "x"), *_sets(ckpt, "loss.delta=-1"), check=False)
    assert proc.returncode == 2 and "loss.delta: expected a number > 0, got -1.0" in proc.stderr


def test_train_refuses_an_out_holding_a_run(run) -> None:
    before = (run / "metrics.jsonl").read_text()
    proc = cli("train", "--out", str(run), "--set", "train.threads=1", check=False)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_saves_the_last_whole_iteration_and_resumes(ckpt, tmp_path, sig, code):
    """Ctrl-C, and SIGTERM (what schedulers and ``docker stop`` send first), sent after the first
    iteration: exit 128 + signal, a checkpoint of the last whole iteration, and a resume that
    continues it."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [
        "train",
        "--out",
        str(out),
        *_sets(ckpt, "train.save_every=1000"),
        "--max-iters",
        "100000",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowdppo.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "resume with: flowdppo resume" in stderr
    done = [r["iter"] for r in read_lines(out)]
    assert done == list(range(1, len(done) + 1))
    # save_every=1000: this checkpoint is the interrupt's, of the last complete iteration
    assert (out / "checkpoints" / "latest").read_text() == f"iter_{done[-1]:06d}"
    cli("resume", str(out), "--max-iters", str(done[-1] + 1))
    assert [r["iter"] for r in read_lines(out)] == [*done, done[-1] + 1]


def test_pretrain_category_weights_are_parsed_and_checked(tmp_path) -> None:
    from flowdppo.cli import main
    from flowdppo.config.flags import float_pairs as _category_weights
    from flowdppo.shapes.pretrain import PretrainConfig, pretrain

    assert _category_weights(None) is None
    assert _category_weights(["position=3", "counting=0.5"]) == {"position": 3.0, "counting": 0.5}
    zeros = [f"{c}=0" for c in ("single_object", "colors", "two_object")]
    zeros += [f"{c}=0" for c in ("color_attr", "counting", "position")]
    for bad, says in (
        (["positions=3"], "names in"),
        (["position"], "weights >= 0"),
        (["position=-1"], "weights >= 0"),
        (["position=x"], "weights >= 0"),
        (zeros, "must not all be 0"),
    ):
        args = [a for b in bad for a in ("--category-weight", b)]
        with pytest.raises(ValueError, match=says):  # refused before any step is taken
            pretrain(tmp_path, PretrainConfig(steps=1, category_weights=_category_weights(bad)))
        assert main(["shapes", "pretrain", "--out", str(tmp_path / "x"), *args]) == 2
        assert not (tmp_path / "x" / "pretrain_state.pt").exists()


def test_shapes_pretrain_passes_the_prior_term_flags(tmp_path, monkeypatch):
    from flowdppo import cli
    from flowdppo.shapes import pretrain as pt

    seen = {}
    monkeypatch.setattr(pt, "pretrain", lambda out, cfg, model_cfg: seen.update(cfg=cfg) or out)
    args = ["shapes", "pretrain", "--out", str(tmp_path), "--prior-batch", "8"]
    args += ["--prior-category", "position", "--prior-category", "counting"]
    args += ["--prior-weight", "4", "--flow-weight", "0"]
    assert cli.main(args) == 0
    cfg = seen["cfg"]
    assert (cfg.prior_batch, cfg.prior_weight, cfg.flow_weight) == (8, 4.0, 0.0)
    assert cfg.prior_categories == ["position", "counting"]
    monkeypatch.undo()
    bad = ["shapes", "pretrain", "--out", str(tmp_path / "x"), "--prior-batch", "2"]
    assert cli.main([*bad, "--prior-category", "spatial"]) == 2
    assert not (tmp_path / "x" / "pretrain_state.pt").exists()


def test_shapes_pretrain_passes_the_caption_noise_flags(tmp_path, monkeypatch):
    from flowdppo import cli
    from flowdppo.shapes import pretrain as pt

    seen = {}
    monkeypatch.setattr(pt, "pretrain", lambda out, cfg, model_cfg: seen.update(cfg=cfg) or out)
    args = ["shapes", "pretrain", "--out", str(tmp_path), "--caption-noise", "0.4"]
    assert cli.main([*args, "--caption-noise-kind", "unmentioned"]) == 0
    assert (seen["cfg"].caption_noise, seen["cfg"].caption_noise_kind) == (0.4, "unmentioned")
    assert cli.main(args) == 0
    assert seen["cfg"].caption_noise_kind == "detail"  # the default kind
    with pytest.raises(SystemExit):  # argparse refuses a kind outside prompts.NOISE_KINDS
        cli.main([*args, "--caption-noise-kind", "swap"])


def test_train_with_compile_says_the_first_iteration_compiles(
    ckpt, tmp_path, capsys, monkeypatch
) -> None:
    from flowdppo import cli as cli_module
    from flowdppo.trainer.trainer import Trainer

    no_compiling = lambda self, max_iters=None, progress=True: None  # noqa: E731
    monkeypatch.setattr(Trainer, "train", no_compiling)
    out = tmp_path / "run"
    assert cli_module.main(["train", "--out", str(out), *_sets(ckpt, "model.compile=true")]) == 0
    assert "model.compile: the first iteration and the first evaluation" in capsys.readouterr().err
    assert "compile: true" in (out / "config.yaml").read_text()


def test_demo_prints_each_evaluations_accuracy_and_a_second_call_resumes(ckpt, tmp_path) -> None:
    out = tmp_path / "demo"
    sets = _sets(ckpt, "eval.every=2", "train.max_iters=2")
    proc = cli("demo", "--out", str(out), "--no-progress", *sets)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("iteration")]
    assert [x.split(":")[0] for x in lines] == ["iteration   0", "iteration   2"]
    rows = read_lines(out, "eval")
    first = ", ".join(
        f"{k.removeprefix('eval/strict_')} {100 * v:.0f}%"
        for k, v in rows[0].items()
        if k.startswith("eval/strict_")
    )
    assert lines[0] == f"iteration   0: {first}" and "single_object" in first
    assert f"demo done: {out}/metrics.jsonl" in proc.stdout and (out / "curves.png").exists()
    again = cli("demo", "--out", str(out), "--no-progress", *sets)  # finished: resumes, no retrain
    assert [x for x in again.stdout.splitlines() if x.startswith("iteration")] == lines
    assert [r["iter"] for r in read_lines(out)] == [1, 2]
