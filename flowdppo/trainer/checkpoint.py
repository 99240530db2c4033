"""Exact checkpoints: trainable weights, optimizer, EMA, RNG states and the data cursor.

Layout of ``RUN/checkpoints/iter_000010/``: ``trainable.safetensors`` (LoRA or full weights),
``ema.safetensors`` (if EMA is on), ``optimizer.pt``, ``state.json`` (iteration = the data cursor:
prompts and noise of iteration i are pure functions of (seed, i)), ``rng.pt``. A checkpoint is
written into a temporary folder and renamed into place, so a crash never leaves a partial one;
``RUN/checkpoints/latest`` names the newest complete checkpoint. The last ``keep`` are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _named_trainable(policy: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in policy.trainable_state_dict().items()}


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    policy: Any,
    optimizer: torch.optim.Optimizer,
    ema: Any,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of the state *after* ``iteration`` iterations."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".tmp_iter_{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_named_trainable(policy), str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file(
            {k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors")
        )
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"iteration": iteration}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    (root / "latest.tmp").write_text(final.name)
    (root / "latest.tmp").replace(root / "latest")
    for old in sorted(p for p in root.glob("iter_*") if p != final)[: -max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None.

    The ``latest`` marker names it; if the marker is missing or names a folder that is gone (a
    crash while re-saving the same iteration removes the old folder before the rename), the
    newest ``iter_*`` folder is taken: only complete checkpoints are ever renamed to that name.
    """
    root = run_dir / "checkpoints"
    marker = root / "latest"
    if marker.exists():
        path = root / marker.read_text().strip()
        if (path / "state.json").exists():
            return path
    done = sorted(p for p in root.glob("iter_*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_trainable(policy: Any, path: Path, use_ema: bool = False) -> None:
    """Load a checkpoint's trainable weights (or its EMA weights) into the policy."""
    file = path / ("ema.safetensors" if use_ema else "trainable.safetensors")
    if not file.exists():
        raise FileNotFoundError(
            f"{file} does not exist" + (" (the run had no EMA)" if use_ema else "")
        )
    policy.load_trainable_state_dict(load_file(str(file)))


def load_checkpoint(path: Path, policy: Any, optimizer: torch.optim.Optimizer, ema: Any) -> int:
    """Restore a checkpoint in place; returns the number of completed iterations."""
    load_trainable(policy, path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    if ema is not None:
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=False)["torch"])
    return int(json.loads((path / "state.json").read_text())["iteration"])
