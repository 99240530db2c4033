"""``flowdppo.trainer.build``: ``sampling.untrained_precision: auto`` is resolved once, printed,
and saved with the run (the same command samples differently on CPUs with and without bfloat16
kernels, so a run must say which it got, and a resume elsewhere must keep it)."""

from __future__ import annotations

import pytest
import torch

from flowdppo.config import RunConfig
from flowdppo.runs import run_config
from flowdppo.trainer.build import resolve_untrained_precision
from flowdppo.trainer.trainer import Trainer

from .tiny import tiny_config


@pytest.mark.parametrize("forced, means", [("1", "reduced"), ("0", "full")])
def test_auto_is_resolved_in_the_config(monkeypatch, forced, means) -> None:
    monkeypatch.setenv("FLOWDPPO_FORCE_BF16_KERNELS", forced)
    cfg = RunConfig()
    assert cfg.sampling.untrained_precision == "auto"
    note = resolve_untrained_precision(cfg, torch.device("cpu"))
    assert cfg.sampling.untrained_precision == means
    assert note.startswith(f"sampling.untrained_precision: auto -> {means} (")
    assert resolve_untrained_precision(cfg, torch.device("cpu")) == ""  # named: left alone


@pytest.mark.parametrize("forced, means", [("1", "reduced"), ("0", "full")])
def test_a_run_saves_and_prints_what_auto_picked(
    tiny_ckpt, tmp_path, monkeypatch, capsys, forced, means
) -> None:
    monkeypatch.setenv("FLOWDPPO_FORCE_BF16_KERNELS", forced)
    Trainer(tiny_config(tiny_ckpt, "sampling.untrained_precision=auto"), tmp_path / "run")
    assert run_config(tmp_path / "run").sampling.untrained_precision == means
    assert f"auto -> {means}" in capsys.readouterr().err
