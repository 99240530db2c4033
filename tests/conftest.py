"""All tests run on one intra-op torch thread: their models and tensors are tiny, and one thread
is faster than two workers (pytest -n 2) contending for the machine's two cores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
