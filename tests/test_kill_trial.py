"""``benchmarks/kill_trial.py``'s judgements on run folders made by hand: where a kill landed,
a corrupt checkpoint, and what differs between two finished runs. (The kills themselves:
``tests/trainer/test_kill.py``; the script's run: docs/reliability.md.)"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from benchmark_modules import load_benchmark
from safetensors.torch import load_file, save_file
from trainer.tiny import build_tiny_checkpoint, tiny_config

from flowdppo.trainer.trainer import Trainer


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("kill_trial")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-iteration run, a checkpoint after each."""
    tmp = tmp_path_factory.mktemp("kill_trial")
    cfg = tiny_config(build_tiny_checkpoint(tmp / "tiny.safetensors"), "train.max_iters=2")
    Trainer(cfg, tmp / "run").train(progress=False)
    return tmp / "run"


def test_where_a_kill_landed(bench, finished, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert bench.landed(run, 0.0) == "starting (no config.yaml yet)"
    shutil.copy(finished / "config.yaml", run / "config.yaml")
    assert bench.landed(run, 0.0) == "before the first checkpoint"
    shutil.rmtree(run)
    shutil.copytree(finished, run)
    assert bench.landed(run, 0.0).startswith("inside an iteration")
    root = run / "checkpoints"
    (root / "latest").write_text("iter_000001")  # iter_000002 renamed, the marker not moved
    assert bench.landed(run, 0.0) == "a checkpoint renamed, 'latest' not moved"
    shutil.rmtree(root / "iter_000002")  # iteration 2 logged, not saved
    assert bench.landed(run, 0.0) == "an iteration logged, not saved"
    since = time.time()
    stale = root / ".tmp_iter_000002"
    stale.mkdir()
    os.utime(stale, (since - 60, since - 60))  # a former kill's temporary folder
    assert bench.landed(run, since) == "an iteration logged, not saved"
    os.utime(stale, (since + 1, since + 1))  # this kill's
    assert bench.landed(run, since) == "writing a checkpoint (temporary folder)"


def test_a_checkpoint_that_does_not_match_its_manifest_is_corrupt(
    bench, finished, tmp_path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert bench.corruption(run) is None
    file = run / "checkpoints" / "iter_000002" / "rng.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    assert "iter_000002: checkpoint file" in bench.corruption(run)
    assert "rng.safetensors does not match its manifest's SHA-256" in bench.corruption(run)


def test_differences_name_the_tensor_or_the_metrics(bench, finished, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert bench.differences(finished, run, 2) == []
    file = run / "checkpoints" / "iter_000002" / "trainable.safetensors"
    weights = load_file(file)
    name = sorted(weights)[0]
    weights[name] = weights[name] + torch.finfo(torch.float32).eps * weights[name].abs().max()
    save_file(weights, str(file))
    assert bench.differences(finished, run, 2) == [f"trainable.{name}"]
    shutil.copy(finished / "checkpoints" / "iter_000002" / "trainable.safetensors", file)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    i = max(j for j, ln in enumerate(lines) if json.loads(ln)["kind"] == "train")
    row = json.loads(lines[i])

    def write() -> None:
        (run / "metrics.jsonl").write_text(
            "\n".join([*lines[:i], json.dumps(row), *lines[i + 1 :]]) + "\n"
        )

    row["time/iter_s"] = 99.0  # wall-clock times are not compared
    write()
    assert bench.differences(finished, run, 2) == []
    row["reward/mean"] += 1e-9
    write()
    assert bench.differences(finished, run, 2) == ["metrics.jsonl"]
