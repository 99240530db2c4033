"""SIGKILL at seven moments of a run, then ``flowdppo resume``: the resumed run ends bitwise equal
to an uninterrupted one, with one metric line per (kind, iteration).

Each run is the ``flowdppo`` command line (``flowdppo.cli.main``) in its own process, forked from
a server that imported torch and flowdppo once (multiprocessing's forkserver: one import instead
of one per process, ~5 s each on a CPU). ``FLOWDPPO_KILL_AT`` (``flowdppo.trainer.crashpoints``)
makes the process send itself SIGKILL at a named moment, so each kill lands where it is meant to,
every time. The run: 4 iterations, a checkpoint after each, an evaluation at iterations 0, 2, 4.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .tiny import read_lines, tiny_overrides, without_time

ITERS = 4

# (FLOWDPPO_KILL_AT, the `latest` checkpoint left, the training lines left). The loop: eval 0;
# it 1, save 1; it 2, eval 2, save 2; it 3, save 3; it 4, eval 4, save 4; each iteration two
# forward batches of 2 samples and two optimizer steps.
MOMENTS = [
    ("eval:1", None, []),  # the base's evaluation: nothing saved, the run starts over
    ("rollout:3", "iter_000001", [1]),  # iteration 2: one forward batch being scored, one to come
    ("update:3", "iter_000001", [1]),  # half of iteration 2's updates taken
    ("eval:2", "iter_000001", [1, 2]),  # iteration 2 logged and evaluated, not saved
    ("checkpoint_write:2", "iter_000001", [1, 2]),  # iter_000002 half written in its temp folder
    ("checkpoint_renamed:3", "iter_000002", [1, 2, 3]),  # iter_000003 in place, `latest` not moved
    ("logged:3", "iter_000002", [1, 2, 3]),  # iteration 3 logged, its checkpoint not written
]


def _run_cli(args: list[str], kill_at: str, log: str) -> None:
    """The forked process: ``flowdppo ARGS`` with stdout and stderr to ``log``."""
    from flowdppo.cli import main

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.pop("FLOWDPPO_KILL_AT", None)
    if kill_at:
        os.environ["FLOWDPPO_KILL_AT"] = kill_at
    os.environ["PYTHONWARNINGS"] = "ignore"
    torch.set_num_threads(1)
    sys.exit(main(args))


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    preload = ["torch", "peft", "accelerate", "torch.utils.tensorboard", "flowdppo.cli"]
    ctx.set_forkserver_preload([*preload, "flowdppo.trainer.trainer", "flowdppo.models.shapes"])
    return ctx


@pytest.fixture(scope="module")
def flowdppo(forkserver, tiny_ckpt, tmp_path_factory):
    """``flowdppo(*args, kill_at="")`` → (exit code, output): one command in a forked process."""
    logs = tmp_path_factory.mktemp("logs")

    def run(*args: str, kill_at: str = "") -> tuple[int, str]:
        log = logs / f"{len(list(logs.iterdir()))}.log"
        proc = forkserver.Process(target=_run_cli, args=(list(args), kill_at, str(log)))
        proc.start()
        proc.join(timeout=120)
        if proc.exitcode is None:
            proc.kill()
            raise AssertionError(f"flowdppo {' '.join(args)} did not finish in 120 s")
        return int(proc.exitcode), log.read_text() if log.exists() else ""

    return run


@pytest.fixture(scope="module")
def sets(tiny_ckpt, tmp_path_factory) -> list[str]:
    """The run's ``--set`` flags: evaluations on two prompts of a file (quicker than the Shapes
    table's), each with its reward and a sample grid."""
    prompts = tmp_path_factory.mktemp("prompts") / "eval.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    extra = ("eval.every=2", f"data.eval_prompts={prompts}", "eval.kl_samples=0")
    extra += (f"train.max_iters={ITERS}", "sampling.batch_size=2")
    return [a for s in tiny_overrides(tiny_ckpt, *extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def reference(flowdppo, sets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    code, log = flowdppo("train", "--out", str(out), *sets)
    assert code == 0, log
    return out


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / f"iter_{ITERS:06d}"
    state = {f"trainable.{k}": v for k, v in load_file(ckpt / "trainable.safetensors").items()}
    state.update({f"optim.{k}": v for k, v in load_file(ckpt / "optimizer.safetensors").items()})
    state.update({f"rng.{k}": v for k, v in load_file(ckpt / "rng.safetensors").items()})
    return state


@pytest.mark.parametrize(("kill_at", "latest", "lines"), MOMENTS, ids=[m[0] for m in MOMENTS])
def test_a_run_killed_at_any_moment_resumes_to_the_uninterrupted_result(
    flowdppo, reference, sets, tmp_path, kill_at, latest, lines
) -> None:
    out = tmp_path / "run"
    code, log = flowdppo("train", "--out", str(out), *sets, kill_at=kill_at)
    assert code == -9, f"expected SIGKILL at {kill_at}, exit {code}:\n{log}"
    marker = out / "checkpoints" / "latest"
    assert (marker.read_text() if marker.exists() else None) == latest
    logged = read_lines(out) if (out / "metrics.jsonl").exists() else []
    assert [r["iter"] for r in logged] == lines
    if kill_at.startswith("checkpoint_write"):  # the half-written folder is there, unfinished
        tmp = out / "checkpoints" / ".tmp_iter_000002"
        assert (tmp / "optimizer.safetensors").exists() and not (tmp / "manifest.json").exists()
    if kill_at.startswith("checkpoint_renamed"):
        assert (out / "checkpoints" / "iter_000003" / "manifest.json").exists()

    code, log = flowdppo("resume", str(out))
    assert code == 0, log
    assert ("starting it over" in log) == (latest is None)
    ref, got = _final_state(reference), _final_state(out)
    assert sorted(got) == sorted(ref)
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f"tensors differ from the uninterrupted run's: {different}"
    rows = read_lines(out, None)
    assert [(r["kind"], r["iter"]) for r in rows] == [
        (r["kind"], r["iter"]) for r in read_lines(reference, None)
    ]
    assert without_time(rows) == without_time(read_lines(reference, None))
    assert not list((out / "checkpoints").glob(".tmp_*"))  # no temporary folder left behind
