"""``collective_failure``: only a collective's failure in a live group of several processes
becomes the one-line ``CollectiveError`` (two processes: tests/trainer/test_distributed_faults.py,
slow)."""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

from flowdppo.trainer.collective import collective_failure
from flowdppo.trainer.trainer import _init_kwargs

from .tiny import tiny_config


def test_without_a_process_group_nothing_is_a_collective_failure() -> None:
    assert not dist.is_initialized()
    assert collective_failure(RuntimeError("[gloo/pair.cc] Connection closed by peer")) is None


def test_one_process_is_never_told_another_stopped(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        err = dist.DistError("[gloo/unbound_buffer.cc] Timed out waiting 15000ms")
        assert collective_failure(err) is None
    finally:
        dist.destroy_process_group()


def test_the_timeout_reaches_the_process_group_only_when_set(tiny_ckpt) -> None:
    assert _init_kwargs(tiny_config(tiny_ckpt)) == []
    (kw,) = _init_kwargs(tiny_config(tiny_ckpt, "train.collective_timeout_s=15"))
    assert kw.to_kwargs() == {"timeout": timedelta(seconds=15)}
