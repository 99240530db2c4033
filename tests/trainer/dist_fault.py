"""Entry point of the distributed fault tests: ``torchrun --nproc_per_node P dist_fault.py FAULT
flowdppo ARGS...`` runs ``flowdppo ARGS`` (``flowdppo.cli.main``) on every process with the
tests' rewards registered, after arranging the fault ``FAULT``:

- ``none``: no fault;
- ``reward_rank1``: the reward raises on process 1 from iteration 2 on (a ``RewardError``: exit 1);
- ``disk_rank0``: writing the checkpoint of iteration 2 fails on process 0 with ENOSPC;
- ``hang_rank1``: the reward hangs (sleeps for an hour) on process 1 from iteration 2 on.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for trainer.tiny

from trainer.tiny import register_test_rewards


def arrange(fault: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    if fault in ("reward_rank1", "hang_rank1"):
        from flowdppo.rewards.base import _REGISTRY

        red = _REGISTRY["test_red"]

        def score(self, images, prompts, metadata):
            # one forward batch per process and iteration in the tests: call 2 is iteration 2
            self.calls = getattr(self, "calls", 0) + 1
            if rank == 1 and self.calls > 1 and fault == "hang_rank1":
                time.sleep(3600)
            if rank == 1 and self.calls > 1:
                raise RuntimeError("the judge crashed on process 1")
            return red.__call__(self, images, prompts, metadata)

        _REGISTRY["test_red"] = type("FailsOnRank1", (red,), {"__call__": score})
    elif fault == "disk_rank0" and rank == 0:
        from flowdppo.trainer import checkpoint

        real = checkpoint.save_file

        def full(tensors, path, *args, **kwargs):
            if ".tmp_iter_000002" in str(path):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real(tensors, path, *args, **kwargs)

        checkpoint.save_file = full
    elif fault not in ("none", "disk_rank0"):
        raise SystemExit(f"unknown fault {fault!r}")


def main() -> int:
    fault, command, *args = sys.argv[1:]
    assert command == "flowdppo", command
    torch.set_num_threads(1)
    register_test_rewards()
    arrange(fault)
    from flowdppo.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
