"""A collective (gather, all-reduce) that fails because another process of the run stopped or
hung, turned into one line (docs/reliability.md, "Several processes")."""

from __future__ import annotations

import torch.distributed as dist


class CollectiveError(RuntimeError):
    """A collective failed on this process because another one stopped (its connection closed)
    or did not answer within ``train.collective_timeout_s``; the message is one line."""


def collective_failure(err: BaseException) -> CollectiveError | None:
    """``err`` as a ``CollectiveError`` naming this process and the likely cause, if it is the
    failure of a collective of a live process group of several processes (gloo or NCCL); None
    otherwise. Call it before the process group is destroyed."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.get_world_size()
    text = str(err)
    if world < 2 or not (isinstance(err, dist.DistError) or "gloo" in text or "NCCL" in text):
        return None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    if "timed out" in text.lower() or "timeout" in text.lower():
        why = (
            "another process did not answer within train.collective_timeout_s (hung, or stopped "
            "without closing its connection)"
        )
    else:
        why = "another process of the run stopped (its own error is in its output)"
    return CollectiveError(
        f"process {dist.get_rank()} of {world}: a collective failed: {why}; this process stops "
        f"too [{first[:200]}]"
    )
