"""Bad input to every command: one line naming what is wrong (the file, the field, the value),
exit code 2 for a user error and 1 for a run that fails, no traceback unless ``--debug``;
run directories that a crash or a signal left behind are resumed or started over, and a resume
that would change the run's config is refused unless allowed. In process (``flowdppo.cli.main``)
for speed; the subprocess paths (signals, real tracebacks) are in ``test_cli.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer.tiny import build_tiny_checkpoint, read_lines, register_test_rewards, tiny_overrides

from flowdppo.cli import main


def _sets(ckpt: Path, *extra: str) -> list[str]:
    return [a for s in tiny_overrides(ckpt, *extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    register_test_rewards()
    return build_tiny_checkpoint(tmp_path_factory.mktemp("errors") / "tiny.safetensors")


@pytest.fixture(scope="module")
def saved_run(ckpt, tmp_path_factory) -> Path:
    """A 1-iteration run with its checkpoint (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", "--out", str(out), *_sets(ckpt), "--max-iters", "1"]) == 0
    return out


def _fails(capsys, argv: list[str], code: int, *needles: str) -> str:
    """Run ``flowdppo ARGV``: it must exit ``code`` with one ``error:`` line holding every needle."""
    try:
        got = main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        got = stop.code
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(line) == 1, err
    assert all(n in line[0] for n in needles), (needles, line[0])
    return line[0]


CONFIG_CASES = [
    ("train.save_every=0", "train.save_every: expected an int >= 1, got 0"),
    ("train.max_iters=0", "train.max_iters: expected an int >= 1, got 0"),
    ("train.threads=-2", "train.threads: expected an int >= 0"),
    ("train.max_minutes=-1", "train.max_minutes: expected a number >= 0"),
    ("train.max_skipped_updates=-1", "train.max_skipped_updates"),
    ("train.collective_timeout_s=-5", "train.collective_timeout_s: expected a number of seconds"),
    ("eval.per_category=0", "eval.per_category: expected an int >= 1, got 0"),
    ("eval.num_inference_steps=0", "eval.num_inference_steps"),
    ("eval.every=-1", "eval.every"),
    ("eval.guidance_scale=0.5", "eval.guidance_scale: expected null or a number >= 1"),
    ("optim.lr=.inf", "optim.lr: expected a finite number > 0, got inf"),
    ("optim.lr=.nan", "optim.lr"),
]


@pytest.mark.parametrize(("override", "message"), CONFIG_CASES)
def test_a_bad_config_value_is_one_line_before_anything_runs(
    ckpt, tmp_path, capsys, override, message
) -> None:
    out = tmp_path / "x"
    _fails(
        capsys, ["train", "--out", str(out), *_sets(ckpt, override)], 2, message, "error: --set: "
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--out", "X", "--max-iters", "-3"], "--max-iters: expected an integer >= 1"),
        (["train", "--out", "X", "--max-iters", "0"], "--max-iters: expected an integer >= 1"),
        (["resume", "X", "--max-iters", "0"], "--max-iters"),
        (["eval", "--run", "X", "--n", "0"], "--n: expected an integer >= 1, got 0"),
        (["eval", "--run", "X", "--steps", "0"], "--steps: expected an integer >= 1, got 0"),
        (["sample", "--run", "X", "--prompt", "a", "--n", "0", "--out", "g.png"], "--n"),
        (["shapes", "pretrain", "--out", "X", "--steps", "0"], "--steps"),
        (["shapes", "eval", "--n", "0"], "--n"),
        (["reward-server", "--reward", "x", "--port", "99999"], "expected a port in 1-65535"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(tmp_path, capsys, monkeypatch, argv, needle) -> None:
    monkeypatch.chdir(tmp_path)
    _fails(capsys, argv, 2, needle)
    assert not (tmp_path / "X").exists()


def test_config_files_that_cannot_be_read_are_named(ckpt, tmp_path, capsys) -> None:
    folder = tmp_path / "cfg_dir"
    folder.mkdir()
    _fails(
        capsys, ["train", str(folder), "--out", str(tmp_path / "a")], 2, str(folder), "directory"
    )
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("train:\n  seed: 0 # caf\xe9\n".encode("latin-1"))
    _fails(capsys, ["train", str(latin), "--out", str(tmp_path / "a")], 2, str(latin), "UTF-8")
    _fails(
        capsys, ["train", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "a")], 2, "none.yaml"
    )


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("p.txt", "a red circle\n".encode("utf-16"), "not UTF-8"),
        (
            "p.jsonl",
            b'{"prompt": "a red circle"}\n{"prompt": "two squ\n',
            "p.jsonl:2: not a JSON line",
        ),
        ("p.jsonl", b'{"prompt": "a red circle"}\n[1, 2]\n', "p.jsonl:2: expected a JSON object"),
        ("p.jsonl", b'{"prompt": ""}\n', "p.jsonl:1: the prompt is empty"),
        ("p.txt", b"\n  \n", "holds no prompts"),
    ],
)
def test_bad_prompt_files_are_named(ckpt, tmp_path, capsys, name, content, needle) -> None:
    prompts = tmp_path / name
    prompts.write_bytes(content)
    argv = ["train", "--out", str(tmp_path / "r"), *_sets(ckpt, f"data.train_prompts={prompts}")]
    _fails(capsys, argv, 2, needle, str(prompts.name))


@pytest.mark.parametrize(
    "argv",
    [
        ["resume", "{d}"],
        ["resume", "{d}", "--set", "train.seed=3"],
        ["eval", "--run", "{d}"],
        ["export", "--run", "{d}", "--out", "{d}/x"],
        ["sample", "--run", "{d}", "--prompt", "a red circle", "--out", "{d}/g.png"],
    ],
)
def test_a_folder_that_holds_no_run_is_named_as_such(tmp_path, capsys, argv) -> None:
    argv = [a.format(d=tmp_path / "nope") for a in argv]
    _fails(capsys, argv, 2, "is " + str(tmp_path / "nope") + " a flowdppo run directory?")
    assert not (tmp_path / "nope").exists()


def test_a_config_that_is_not_yaml_is_one_line_with_its_position(tmp_path, capsys) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  seed: [0\n")
    _fails(capsys, ["train", str(broken), "--out", str(tmp_path / "a")], 2, "line 3, column 1")


def test_sample_refuses_an_empty_prompt(saved_run, tmp_path, capsys) -> None:
    argv = ["sample", "--run", str(saved_run), "--prompt", "a red circle", "--prompt", " "]
    _fails(capsys, [*argv, "--out", str(tmp_path / "g.png")], 2, "--prompt number 2 is empty")


def test_plot_of_a_run_with_no_training_line_is_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    _fails(
        capsys,
        ["plot", "--run", str(run), "--out", str(tmp_path / "c.png")],
        2,
        "no training lines",
    )
    (run / "metrics.jsonl").write_text('{"kind": "train", "iter": 1}\n{"kind": "tr\n{}\n')
    _fails(capsys, ["plot", "--run", str(run)], 2, "metrics.jsonl:2: not a JSON metric line")


def _unsaved_run(ckpt: Path, out: Path, *extra: str) -> Path:
    """What a run killed before its first checkpoint leaves: config, metrics, a temporary folder."""
    from trainer.tiny import tiny_config

    from flowdppo.config import dump_config

    out.mkdir(parents=True)
    dump_config(tiny_config(ckpt, *extra), out / "config.yaml")
    (out / "metrics.jsonl").write_text('{"kind": "eval", "iter": 0, "eval/x": 1.0}\n')
    (out / "checkpoints" / ".tmp_iter_000001").mkdir(parents=True)
    return out


def test_eval_and_export_of_a_run_without_checkpoint_are_refused(ckpt, tmp_path, capsys) -> None:
    run = _unsaved_run(ckpt, tmp_path / "run")
    _fails(capsys, ["eval", "--run", str(run)], 2, "holds no checkpoint")
    assert not (run / "eval").exists()
    cfg = (run / "config.yaml").read_text().replace("family: shapes", "family: sd3")
    (run / "config.yaml").write_text(cfg)
    _fails(capsys, ["export", "--run", str(run), "--out", str(tmp_path / "x")], 2, "no checkpoint")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["resume", "eval"])
@pytest.mark.parametrize("damage", [b"", b"\x00" * 40])
def test_a_truncated_checkpoint_file_is_named(saved_run, tmp_path, capsys, command, damage) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    bad = run / "checkpoints" / "iter_000001" / "trainable.safetensors"
    bad.write_bytes(damage)
    argv = ["resume", str(run)] if command == "resume" else ["eval", "--run", str(run)]
    _fails(capsys, argv, 2, str(bad), "empty" if not damage else "truncated")


def test_a_truncated_shapes_checkpoint_is_named(tmp_path, capsys) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00")
    _fails(capsys, ["shapes", "eval", "--checkpoint", str(bad), "--n", "1"], 2, str(bad))


def test_a_reward_returning_nan_is_one_line_exit_1(ckpt, tmp_path, capsys) -> None:
    from flowdppo.rewards.base import _REGISTRY, RewardOutput, register_reward

    if "test_nan" not in _REGISTRY:

        @register_reward("test_nan")
        class TestNan:
            batch_size = 64
            device = torch.device("cpu")

            def __call__(self, images, prompts, metadata):
                return RewardOutput(scores=torch.full((len(images),), float("nan")), details={})

    argv = ["train", "--out", str(tmp_path / "r"), *_sets(ckpt, "rewards=[{name: test_nan}]")]
    _fails(capsys, argv, 1, "test_nan")


def test_debug_shows_the_traceback(ckpt, tmp_path) -> None:
    from flowdppo.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.save_every"):
        main(["--debug", "train", "--out", str(tmp_path / "x"), *_sets(ckpt, "train.save_every=0")])
    with pytest.raises(ConfigError):  # anywhere on the line
        main(["train", "--out", str(tmp_path / "x"), *_sets(ckpt, "train.max_iters=0"), "--debug"])


# -- run directories left by a crash, and resume's config check --------------------------------
def _rows_unique(run: Path) -> list[tuple[str, int]]:
    keys = [(r["kind"], r["iter"]) for r in read_lines(run, None)]
    assert len(keys) == len(set(keys)), keys
    return keys


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_over(ckpt, tmp_path, capsys):
    run = _unsaved_run(ckpt, tmp_path / "run", "eval.every=2")
    assert main(["resume", str(run), "--max-iters", "2"]) == 0
    assert "starting it over" in capsys.readouterr().err
    assert _rows_unique(run) == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]
    assert not (run / "checkpoints" / ".tmp_iter_000001").exists()


def test_train_into_a_run_killed_before_its_first_checkpoint_starts_over(ckpt, tmp_path, capsys):
    run = _unsaved_run(ckpt, tmp_path / "run")
    (run / "notes.txt").write_text("mine")  # not flowdppo's: left alone
    assert main(["train", "--out", str(run), *_sets(ckpt, "eval.every=1"), "--max-iters", "1"]) == 0
    assert "starting it over" in capsys.readouterr().err
    assert _rows_unique(run) == [("eval", 0), ("train", 1), ("eval", 1)]
    assert (run / "notes.txt").read_text() == "mine"


def test_train_into_a_saved_run_is_still_refused(saved_run, ckpt, capsys) -> None:
    before = (saved_run / "metrics.jsonl").read_text()
    _fails(capsys, ["train", "--out", str(saved_run), *_sets(ckpt)], 2, "already holds a run")
    assert (saved_run / "metrics.jsonl").read_text() == before


def test_a_run_stopped_at_iteration_0_resumes_without_a_second_evaluation(ckpt, tmp_path):
    """A signal during the first evaluation saves a checkpoint of iteration 0; resuming it must
    not evaluate iteration 0 again (one line per (kind, iteration))."""
    from trainer.tiny import tiny_config

    from flowdppo.trainer.trainer import StopRequested, Trainer

    cfg = tiny_config(ckpt, "eval.every=2")
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    import signal

    real = trainer.evaluate

    def evaluate_then_signal(*a, **k):
        out = real(*a, **k)
        signal.raise_signal(signal.SIGTERM)
        return out

    trainer.evaluate = evaluate_then_signal
    with pytest.raises(StopRequested) as stop:
        trainer.train(2, progress=False)
    assert stop.value.signum == signal.SIGTERM
    assert (run / "checkpoints" / "latest").read_text() == "iter_000000"
    Trainer(cfg, run, resume=True).train(2, progress=False)
    assert _rows_unique(run) == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]


def test_resume_refuses_a_config_change_unless_allowed(saved_run, tmp_path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    config = (run / "config.yaml").read_text()
    line = _fails(
        capsys,
        ["resume", str(run), "--set", "train.seed=7", "--set", "optim.lr=1.0"],
        2,
        "train.seed: 0 -> 7",
        "optim.lr: 0.01 -> 1.0",
        "--allow-config-change",
    )
    assert "changed config" in line
    assert (run / "config.yaml").read_text() == config and not (
        run / "config_changes.jsonl"
    ).exists()
    # `auto` is what the run resolved and saved (full here): not a change
    assert (
        main(["resume", str(run), "--set", "sampling.untrained_precision=auto", "--max-iters", "1"])
        == 0
    )
    assert not (run / "config_changes.jsonl").exists()
    # a key that cannot change the computation goes through, recorded
    assert main(["resume", str(run), "--set", "train.save_every=3", "--max-iters", "2"]) == 0
    assert (
        main(
            [
                "resume",
                str(run),
                "--set",
                "train.seed=7",
                "--allow-config-change",
                "--max-iters",
                "3",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (run / "config_changes.jsonl").read_text().splitlines()]
    assert rows[0] == {"iter": 1, "changes": {"train.save_every": [1, 3]}}
    assert rows[1]["iter"] == 2 and rows[1]["changes"]["train.seed"] == [0, 7]
    assert "seed: 7" in (run / "config.yaml").read_text()
