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


def load_run_policy(
    run_dir: str | Path, *, use_ema: bool | None = None, device: str | None = None
) -> tuple[Any, RunConfig, int]:
    """(policy with the latest checkpoint's weights, config, iteration). EMA weights by default
    when the run kept an EMA; iteration 0 (the base model) when there is no checkpoint yet."""
    from flowdppo.trainer.build import build_policy
    from flowdppo.trainer.checkpoint import latest_checkpoint, load_trainable

    cfg = run_config(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy = build_policy(cfg, dev)
    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        return policy, cfg, 0
    ema = (ckpt / "ema.safetensors").exists() if use_ema is None else use_ema
    load_trainable(policy, ckpt, use_ema=ema)
    return policy, cfg, int(ckpt.name.split("_")[1])
