"""A run directory that cannot hold the run is refused before the first iteration (not writable,
too little free space: one line naming the path, the free and the needed space), and a
checkpoint write that fails (a full disk) leaves the previous checkpoint intact and exits 1 with
one line; the run then resumes."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from flowdppo.cli import main
from flowdppo.trainer import checkpoint
from flowdppo.trainer.checkpoint import MARGIN_BYTES, RunDirError, check_run_dir, checkpoint_bytes

from .tiny import read_lines, tiny_overrides

MiB = 2**20


def _sets(ckpt: Path, *extra: str) -> list[str]:
    return [a for s in tiny_overrides(ckpt, *extra) for a in ("--set", s)]


def _free(monkeypatch, free: int) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(
        checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=free), raising=True
    )


def test_checkpoint_bytes_by_hand() -> None:
    """Weights + AdamW's two moments in the weights' dtype + the EMA's weights."""
    weights = {"a": torch.zeros(10, 3), "b": torch.zeros(5, dtype=torch.bfloat16)}  # 120 + 10 B
    policy = SimpleNamespace(trainable_state_dict=lambda: weights)
    ema = SimpleNamespace(state_dict=lambda: {"a": torch.zeros(10, 3)})  # 120 B
    assert checkpoint_bytes(policy, None) == 3 * 130
    assert checkpoint_bytes(policy, ema) == 3 * 130 + 120


def test_the_estimate_is_the_size_of_a_saved_checkpoints_tensors(tiny_ckpt, tmp_path) -> None:
    """A real checkpoint after one iteration: its weights and optimizer tensors (bar Adam's step
    counters, 4 bytes each) weigh what checkpoint_bytes said before the first step."""
    from flowdppo.trainer.trainer import Trainer

    from .tiny import tiny_config

    trainer = Trainer(tiny_config(tiny_ckpt), tmp_path / "run")
    estimate = checkpoint_bytes(trainer.policy, trainer.ema)
    trainer.train(1, progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "iter_000001"
    saved = [*load_file(ckpt / "trainable.safetensors").items()]
    saved += [(k, v) for k, v in load_file(ckpt / "optimizer.safetensors").items()]
    size = sum(v.numel() * v.element_size() for k, v in saved if not k.endswith(".step"))
    assert size == estimate > 0


def test_too_little_free_space_is_refused_naming_path_free_and_needed(
    tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    _free(monkeypatch, 50 * MiB)
    with pytest.raises(RunDirError) as err:
        check_run_dir(run, 10 * MiB)  # 3 × 10 MiB (2 kept + 1 being written) + 64 MiB
    assert str(err.value).startswith(
        f"not enough free disk space for the run directory {run}: 50.0 MiB free, 94.0 MiB needed"
    )
    # the checkpoints already there count: 4 MiB of them, 4 MiB less needed
    (run / "checkpoints" / "iter_000001").mkdir(parents=True)
    (run / "checkpoints" / "iter_000001" / "trainable.safetensors").write_bytes(b"0" * 4 * MiB)
    with pytest.raises(RunDirError, match=r"50\.0 MiB free, 90\.0 MiB needed"):
        check_run_dir(run, 10 * MiB)
    _free(monkeypatch, 90 * MiB)
    check_run_dir(run, 10 * MiB)  # exactly enough
    assert 64 * MiB == MARGIN_BYTES
    assert [p.name for p in run.iterdir()] == ["checkpoints"]  # the probe file is gone


def test_train_refuses_a_full_disk_before_the_first_iteration(
    tiny_ckpt, tmp_path, monkeypatch, capsys
):
    _free(monkeypatch, 3 * MiB)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *_sets(tiny_ckpt), "--max-iters", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"not enough free disk space for the run directory {out}: 3.0 MiB free" in err
    assert not (out / "config.yaml").exists() and not (out / "metrics.jsonl").exists()


def test_an_unwritable_run_directory_is_refused(tiny_ckpt, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "a_file").write_text("")  # a folder under a file cannot be created
    out = tmp_path / "a_file" / "run"
    assert main(["train", "--out", str(out), *_sets(tiny_ckpt), "--max-iters", "1"]) == 2
    assert (
        f"error: the run directory {out} is not writable: Not a directory"
        in capsys.readouterr().err
    )
    # permission denied (faked: the tests may run as root, whom no mode stops)
    real_open = Path.open

    def denied(self, *args, **kwargs):
        if self.name.startswith(".write_probe"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *_sets(tiny_ckpt), "--max-iters", "1"]) == 2
    err = capsys.readouterr().err
    assert f"error: the run directory {out} is not writable: Permission denied" in err
    assert err.count("error:") == 1 and not (out / "config.yaml").exists()


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(
    tiny_ckpt, tmp_path, monkeypatch, capsys
):
    """ENOSPC on the second checkpoint's first file: exit 1, one line naming the iteration, the
    error and the intact checkpoint; no temporary folder left; resuming redoes iteration 2."""
    real_save = checkpoint.save_file

    def full(tensors, path, *args, **kwargs):
        if ".tmp_iter_000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *_sets(tiny_ckpt), "--max-iters", "3"]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (
        f"error: writing the checkpoint of iteration 2 to {out / 'checkpoints'} failed: No space "
        f"left on device; iter_000001 is intact: free space (or fix permissions) and resume with "
        f"`flowdppo resume {out}`"
    )
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "iter_000001"
    assert sorted(p.name for p in root.iterdir()) == ["iter_000001", "latest"]
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert main(["resume", str(out), "--max-iters", "3"]) == 0
    assert [r["iter"] for r in read_lines(out)] == [1, 2, 3]
    assert (root / "latest").read_text() == "iter_000003"
