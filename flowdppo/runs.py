"""Open a finished (or running) run directory: its config, and its policy at the latest checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowdppo.config import RunConfig, load_config


def run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run saved (``RUN/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a flowdppo run directory?")
    return load_config(path)


# Keys that cannot change what a resumed run computes: its checkpoints' cadence and budget.
RESUME_SAFE_KEYS = ("train.save_every", "train.sample_every", "train.max_minutes")

# The files a run writes before its first checkpoint (what starting it over removes).
RUN_FILES = ("metrics.jsonl", "config.yaml", "config_changes.jsonl", "tensorboard", "samples")


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every config value that differs."""
    from flowdppo.config import config_to_dict

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, v in d.items():
            name = f"{prefix}.{key}" if prefix else key
            # sections recurse; a field's own dict value (a reward's kwargs) is one value
            out.update(flat(v, name) if isinstance(v, dict) and "." not in name else {name: v})
        return out

    a, b = flat(config_to_dict(old)), flat(config_to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def has_checkpoint(run_dir: str | Path) -> bool:
    from flowdppo.trainer.checkpoint import latest_checkpoint

    return latest_checkpoint(Path(run_dir)) is not None


def clear_unsaved_run(run_dir: str | Path) -> list[str]:
    """Remove what a run wrote before it was stopped without any checkpoint (metrics, config,
    samples, TensorBoard events, temporary checkpoint folders), so that it starts over cleanly;
    files flowdppo did not write are left. Returns the names removed."""
    import shutil

    run = Path(run_dir)
    if has_checkpoint(run):
        raise ValueError(f"{run} holds a checkpoint: it is a saved run, not cleared")
    gone = []
    for name in (*RUN_FILES, "checkpoints"):
        path = run / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        gone.append(name)
    return gone


def load_run_policy(
    run_dir: str | Path,
    *,
    use_ema: bool | None = None,
    device: str | None = None,
    require_checkpoint: bool = False,
) -> tuple[Any, RunConfig, int]:
    """(policy with the latest checkpoint's weights, config, iteration). EMA weights by default
    when the run kept an EMA; iteration 0 (the base model) when there is no checkpoint yet, or
    an error with ``require_checkpoint`` (evaluating or exporting a run that saved nothing)."""
    from flowdppo.trainer.build import build_policy
    from flowdppo.trainer.checkpoint import latest_checkpoint, load_trainable

    cfg = run_config(run_dir)
    if require_checkpoint and latest_checkpoint(Path(run_dir)) is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / 'checkpoints'} holds no checkpoint: the run saved none yet "
            f"(resume it with `flowdppo resume {run_dir}`)"
        )
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy = build_policy(cfg, dev)
    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        return policy, cfg, 0
    ema = (ckpt / "ema.safetensors").exists() if use_ema is None else use_ema
    load_trainable(policy, ckpt, use_ema=ema)
    return policy, cfg, int(ckpt.name.split("_")[1])
