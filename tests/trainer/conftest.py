"""Trainer tests: one intra-op thread (tiny models; the machine's cores are shared) and a tiny
random Shapes checkpoint built once per session (see ``tiny.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from .tiny import build_tiny_checkpoint, register_test_rewards


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_test_rewards()
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")
