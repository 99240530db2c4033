"""Trainer tests: a tiny random Shapes checkpoint built once per session (see ``tiny.py``; one
intra-op thread comes from ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .tiny import build_tiny_checkpoint, register_test_rewards


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_test_rewards()
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")
