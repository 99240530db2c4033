"""Entry point of the multi-process test: ``torchrun --nproc_per_node P dist_run.py OUT CKPT [k=v ...]``.

Trains a tiny run with the gloo backend on CPU and, on rank 0, writes the final trainable
weights to ``OUT/final.safetensors`` (metrics.jsonl is written by rank 0 as in any run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for trainer.tiny

from trainer.tiny import register_test_rewards, tiny_config


def main() -> None:
    out, ckpt, *extra = sys.argv[1:]
    torch.set_num_threads(1)
    register_test_rewards()
    from safetensors.torch import save_file

    from flowdppo.trainer.trainer import Trainer

    trainer = Trainer(tiny_config(Path(ckpt), *extra), out)
    trainer.train(progress=False)
    if trainer.is_main:
        state = {k: v.contiguous() for k, v in trainer.policy.trainable_state_dict().items()}
        save_file(state, str(Path(out) / "final.safetensors"))


if __name__ == "__main__":
    main()
