"""Every YAML in configs/ (except accelerate's) loads and validates against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowdppo.config import load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.rewards
    if path.name.startswith("shapes_"):
        assert cfg.model.family == "shapes"
