"""A tiny random Shapes checkpoint and the tiny run settings shared by the trainer/CLI tests.

The checkpoint is saved exactly as ``flowdppo.shapes.pretrain`` saves one (safetensors, metadata
``model`` = JSON of the architecture, ``sampling`` = JSON ``{"shift": 1.0}``). The Shapes model
zero-initialises its adaLN and output layers (``v ≡ 0`` and no gradient into the blocks), so
those get small random weights here: the policy is then a non-trivial function whose LoRA
weights receive gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

TINY_ARCH = dict(
    width=32, depth=1, heads=2, text_width=16, text_depth=1, stem_channels=8, head_channels=8
)
ZERO_INIT = ("ada", "out_ada", "head_ada", "head_out")  # module name suffixes initialised to 0


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a random tiny Shapes checkpoint to ``path`` (a .safetensors file) and return it."""
    from safetensors.torch import save_file

    from flowdppo.shapes.model import ShapesFlowModel, ShapesModelConfig

    torch.manual_seed(seed)
    cfg = ShapesModelConfig(**TINY_ARCH)
    model = ShapesFlowModel(cfg)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.split(".")[-1] in ZERO_INIT:
                module.weight.normal_(0.0, 0.05)
                module.bias.normal_(0.0, 0.05)
    meta = {"model": json.dumps(cfg.to_dict()), "sampling": json.dumps({"shift": 1.0})}
    sd = {k: t.detach().contiguous() for k, t in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)
    return path


def tiny_overrides(checkpoint: Path, *extra: str) -> list[str]:
    """``--set`` overrides of a tiny, fast run (later entries in ``extra`` win)."""
    return [
        f"model.pretrained={checkpoint}",
        "model.lora_rank=2",
        "model.lora_alpha=4",
        "sampling.num_inference_steps=4",
        "sampling.train_pool=[0.0,1.0]",
        "sampling.train_steps=2",
        "sampling.prompts_per_iter=2",
        "sampling.group_size=2",
        "sampling.batch_size=4",
        "optim.micro_batch_size=4",
        "optim.lr=1e-2",
        "rewards=[{name: jpeg_incompressibility}]",
        "eval.every=0",
        "eval.per_category=1",
        "eval.num_inference_steps=4",
        "train.save_every=1",
        "train.sample_every=1",
        "train.threads=1",
        "train.kl_ref_every=1",  # kl/ref_mean on every line (the default skips iterations)
        # auto would pick by the CPU (bfloat16 untrained steps where oneDNN has the kernels), and
        # the invariance tests compare runs to float32 noise: pinned; tests of reduced set it.
        "sampling.untrained_precision=full",
        *extra,
    ]


def tiny_config(checkpoint: Path, *extra: str):
    from flowdppo.config import load_config

    return load_config(None, tiny_overrides(checkpoint, *extra))


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python -m flowdppo.cli ARGS`` in a subprocess with one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "flowdppo.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"flowdppo {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def read_lines(run_dir: Path, kind: str | None = "train") -> list[dict]:
    from flowdppo.trainer.logging import read_metrics

    return read_metrics(run_dir, kind)


def without_time(rows: list[dict]) -> list[dict]:
    """Metric lines without wall-clock keys (``time/*``), which differ between runs."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def register_test_rewards() -> None:
    """Register ``test_red``: the mean red value of the image, a smooth reward.

    JPEG sizes depend on 8-bit rounding, so a last-bit change in a pixel (float32 CPU kernels are
    not batch-invariant: ≈5e-7 on latents) can change a score by a whole byte. Invariance tests
    that compare runs split differently need a reward that moves by no more than its input.
    """
    from flowdppo.rewards.base import _REGISTRY, RewardOutput, register_reward

    if "test_red" in _REGISTRY:
        return

    @register_reward("test_red")
    class TestRed:
        batch_size = 64
        device = torch.device("cpu")

        def __call__(self, images, prompts, metadata):
            return RewardOutput(scores=images[:, 0].float().mean(dim=(1, 2)), details={})

    @register_reward("test_fails_on_squares")
    class TestFailsOnSquares(TestRed):
        """``test_red``, but raises for any batch holding a prompt with "square" in it."""

        def __call__(self, images, prompts, metadata):
            if any("square" in p for p in prompts):
                raise RuntimeError("cannot score squares")
            return super().__call__(images, prompts, metadata)
