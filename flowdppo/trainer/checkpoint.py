"""Exact checkpoints: trainable weights, optimizer, EMA, RNG states and the data cursor.

Layout of ``RUN/checkpoints/iter_000010/``: ``trainable.safetensors`` (LoRA or full weights),
``ema.safetensors`` (if EMA is on), ``optimizer.safetensors`` + ``optimizer.json`` (the
optimizer's tensors, and its hyper-parameters and scalars), ``rng.safetensors``, ``state.json``
(iteration = the data cursor: prompts and noise of iteration i are pure functions of (seed, i))
and ``manifest.json`` (every other file's size and SHA-256). Nothing is pickled: a checkpoint from
an untrusted source cannot run code when it is loaded.

A checkpoint is written into a temporary folder, every file and the folder fsynced, and renamed
into place, so a crash (or a full disk) never leaves a partial one and never touches the previous
one; ``RUN/checkpoints/latest`` names the newest complete checkpoint (a name, resolved inside
``checkpoints/`` only). Loading checks each file against the manifest first and names the file
that is truncated or changed. The last ``keep`` are kept.

Checkpoints written before the manifest (``optimizer.pt``, ``rng.pt``) still load, with
``torch.load(weights_only=True)``: tensors and plain containers only, a pickled object is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flowdppo.trainer.crashpoints import crash_point

MANIFEST = "manifest.json"
_NAME = re.compile(r"iter_\d{6,}\Z")
KEEP = 2  # checkpoints kept
MARGIN_BYTES = 64 * 2**20  # free space asked beyond the checkpoints: metrics, sample grids, logs


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, changed or unsafe; the message names the file."""


class RunDirError(OSError):
    """The run directory cannot be used: not writable, or too little free space; one line."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, lost permissions); the previous one is intact."""


def _named_trainable(policy: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in policy.trainable_state_dict().items()}


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (POSIX), to the disk."""
    if path.is_dir() and os.name != "posix":
        return  # folders cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _optimizer_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` split into its tensors (``state.<param>.<name>``) and the
    JSON of everything else (hyper-parameters, non-tensor per-parameter values)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for name, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], current: dict[str, Any]
) -> dict[str, Any]:
    """The inverse of ``_optimizer_files``; lists stand for the tuples of the current groups."""
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = t
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    groups = []
    for saved, now in zip(meta["param_groups"], current["param_groups"], strict=False):
        groups.append(
            {k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()}
        )
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    policy: Any,
    optimizer: torch.optim.Optimizer,
    ema: Any,
    keep: int = KEEP,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of the state *after* ``iteration`` iterations (atomically).
    ``extra``: more JSON state of the trainer (e.g. the adaptive δ), kept in ``state.json``."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".tmp_iter_{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_named_trainable(policy), str(tmp / "trainable.safetensors"))
        if ema is not None:
            ema_state = {k: v.contiguous() for k, v in ema.state_dict().items()}
            save_file(ema_state, str(tmp / "ema.safetensors"))
        tensors, meta = _optimizer_files(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        crash_point("checkpoint_write")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**(extra or {}), "iteration": iteration}))
        files = sorted(p for p in tmp.iterdir())
        manifest = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
        (tmp / MANIFEST).write_text(json.dumps({"format": 2, "files": manifest}, indent=1))
        for p in [*files, tmp / MANIFEST, tmp]:
            _fsync(p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: the previous checkpoint stands
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    crash_point("checkpoint_renamed")
    (root / "latest.tmp").write_text(final.name)
    _fsync(root / "latest.tmp")
    (root / "latest.tmp").replace(root / "latest")
    _fsync(root)
    for old in sorted(p for p in root.glob("iter_*") if p != final)[: -max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_bytes(policy: Any, ema: Any, moments: int = 2) -> int:
    """The size of one checkpoint, estimated before the first: the trainable weights, the
    optimizer's ``moments`` tensors of each (AdamW: its two moments, in the weights' dtype;
    empty until its first step, so not measurable then) and the EMA's weights."""
    weights = sum(t.numel() * t.element_size() for t in policy.trainable_state_dict().values())
    shadow = (
        0 if ema is None else sum(t.numel() * t.element_size() for t in ema.state_dict().values())
    )
    return (1 + moments) * weights + shadow


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_run_dir(run_dir: Path, checkpoint_size: int, keep: int = KEEP) -> None:
    """Refuse a run directory that cannot hold the run, before its first iteration.

    It must be writable (a file is created, fsynced and removed), and its disk must have free
    ``(keep + 1) × checkpoint_size`` (the peak of a save: ``keep`` checkpoints kept and the one
    being written beside them), less the checkpoints already there, plus ``MARGIN_BYTES``.
    Raises ``RunDirError`` naming the path, the free and the needed space.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_probe_{os.getpid()}"
        with probe.open("wb") as f:
            f.write(b"flowdppo")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        raise RunDirError(
            f"the run directory {run_dir} is not writable: {err.strerror or err}"
        ) from err
    there = sum(f.stat().st_size for f in (run_dir / "checkpoints").glob("iter_*/*") if f.is_file())
    needed = max(0, (keep + 1) * checkpoint_size - there) + MARGIN_BYTES
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise RunDirError(
            f"not enough free disk space for the run directory {run_dir}: {_size(free)} free, "
            f"{_size(needed)} needed ({keep + 1} checkpoints of {_size(checkpoint_size)} at the "
            f"peak of a save, plus {_size(MARGIN_BYTES)} for logs and samples)"
        )


def write_failure(run_dir: Path, iteration: int, err: OSError | None) -> CheckpointWriteError:
    """The one-line error of a checkpoint that could not be written (``err``: the main
    process's error; None on the others)."""
    last = latest_checkpoint(run_dir) if err is not None else None
    why = (err.strerror or str(err)) if err is not None else "on process 0"
    return CheckpointWriteError(
        f"writing the checkpoint of iteration {iteration} to {run_dir / 'checkpoints'} failed: "
        f"{why}; "
        + (f"{last.name} is intact: " if last else "no checkpoint was saved before: ")
        + f"free space (or fix permissions) and resume with `flowdppo resume {run_dir}`"
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None.

    The ``latest`` marker names it (a folder name inside ``checkpoints/``: anything else it
    holds, such as a path, is ignored); if the marker is missing or names a folder that is gone (a
    crash while re-saving the same iteration removes the old folder before the rename), the
    newest ``iter_*`` folder is taken: only complete checkpoints are ever renamed to that name.
    """
    root = run_dir / "checkpoints"
    marker = root / "latest"
    if marker.is_file():
        name = marker.read_text(errors="replace").strip()
        if _NAME.match(name) and (root / name / "state.json").is_file():
            return root / name
    done = sorted(
        p for p in root.glob("iter_*") if _NAME.match(p.name) and (p / "state.json").is_file()
    )
    return done[-1] if done else None


def _checked(path: Path, name: str) -> Path:
    """``path/name``, after checking it against the checkpoint's manifest (when it has one)."""
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {file} is missing")
    if not (path / MANIFEST).is_file():
        return file  # written before manifests
    try:
        entry = json.loads((path / MANIFEST).read_text())["files"][name]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / MANIFEST} is damaged or does not list {name}") from err
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise CheckpointError(
            f"checkpoint file {file} is {'empty' if size == 0 else 'truncated'} or changed: "
            f"{size} bytes, its manifest says {entry['bytes']}; delete {path} to resume from an "
            "earlier checkpoint"
        )
    if _sha256(file) != entry["sha256"]:
        raise CheckpointError(
            f"checkpoint file {file} does not match its manifest's SHA-256 (corrupted or "
            f"changed); delete {path} to resume from an earlier checkpoint"
        )
    return file


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors' own error does not name the file
        raise CheckpointError(f"checkpoint file {file} cannot be read: {err}") from err


def _load_legacy(file: Path) -> Any:
    """A pre-manifest ``.pt`` file: tensors and plain containers only, never pickled code."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint file {file} is refused: it is not a plain tensor file ({err})"
        ) from err


def load_trainable(policy: Any, path: Path, use_ema: bool = False) -> None:
    """Load a checkpoint's trainable weights (or its EMA weights) into the policy."""
    policy.load_trainable_state_dict(trainable_tensors(path, use_ema))


def trainable_tensors(path: Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights (or its EMA weights) by parameter name, on the CPU,
    checked against its manifest: what ``flowdppo export`` reads without building the model."""
    name = "ema.safetensors" if use_ema else "trainable.safetensors"
    if use_ema and not (path / name).exists():
        raise FileNotFoundError(f"{path / name} does not exist (the run had no EMA)")
    return _load_tensors(_checked(path, name))


def load_checkpoint(path: Path, policy: Any, optimizer: torch.optim.Optimizer, ema: Any) -> int:
    """Restore a checkpoint in place; returns the number of completed iterations."""
    names = ["trainable.safetensors", "state.json"]
    names += ["ema.safetensors"] if ema is not None else []
    legacy = not (path / MANIFEST).is_file() and (path / "optimizer.pt").is_file()
    names += ["optimizer.pt", "rng.pt"] if legacy else ["optimizer.safetensors", "optimizer.json"]
    names += [] if legacy else ["rng.safetensors"]
    files = {n: _checked(path, n) for n in names}  # every file checked before any is loaded
    if legacy:
        opt_state, rng = _load_legacy(files["optimizer.pt"]), _load_legacy(files["rng.pt"])
    else:
        meta = json.loads(files["optimizer.json"].read_text())
        tensors = _load_tensors(files["optimizer.safetensors"])
        opt_state = _optimizer_state(tensors, meta, optimizer.state_dict())
        rng = _load_tensors(files["rng.safetensors"])
    policy.load_trainable_state_dict(_load_tensors(files["trainable.safetensors"]))
    optimizer.load_state_dict(opt_state)
    if ema is not None:
        ema.load_state_dict(_load_tensors(files["ema.safetensors"]))
    torch.set_rng_state(rng["torch"])
    return int(json.loads(files["state.json"].read_text())["iteration"])


def checkpoint_state(path: Path) -> dict[str, Any]:
    """The checkpoint's ``state.json``: its iteration and any ``extra`` state saved with it."""
    return dict(json.loads(_checked(path, "state.json").read_text()))
