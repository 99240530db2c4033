"""Tests for flowdppo/shapes/features.py: the shipped feature net and its training function."""

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from flowdppo.shapes.features import (
    NUM_CLASSES,
    SHIPPED,
    FeatureNet,
    cell_accuracy,
    cell_labels,
    extract_features,
    heldout_batch,
    load_feature_net,
    train_feature_net,
)
from flowdppo.shapes.prompts import load_split, sample_scenes
from flowdppo.shapes.render import render
from flowdppo.shapes.world import Scenes


def _shipped_path() -> Path:
    return Path(str(resources.files("flowdppo").joinpath(*SHIPPED)))


def test_shipped_file_is_small_and_carries_its_config():
    path = _shipped_path()
    assert path.stat().st_size < 1_000_000
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == {"channels": [16, 32, 64], "feature_dim": 128}
    assert json.loads(meta["info"])["cell_acc"] >= 0.99


def test_architecture_sizes():
    net = FeatureNet()
    assert sum(p.numel() for p in net.parameters()) == 187_808  # ≤ 300k
    x = torch.rand(5, 3, 32, 32)
    assert net.features(x).shape == (5, 128)
    assert net(x).shape == (5, 16, NUM_CLASSES) and NUM_CLASSES == 16
    with pytest.raises(
        ValueError, match=r"images: expected \[N, 3, 32, 32\], got \(5, 32, 32, 3\)"
    ):
        net.features(x.permute(0, 2, 3, 1))


def test_cell_labels_by_hand():
    scenes = Scenes.empty(1)
    scenes.shape[0, 3], scenes.color[0, 3] = 2, 2  # blue triangle in cell 3: 1 + 3 * 2 + 2
    scenes.shape[0, 12], scenes.color[0, 12] = 0, 0  # red circle in cell 12: 1
    expected = torch.zeros(1, 16, dtype=torch.int64)
    expected[0, 3], expected[0, 12] = 9, 1
    assert torch.equal(cell_labels(scenes), expected)


def test_shipped_net_reads_cells_of_fresh_renders():
    net = load_feature_net()
    acc = cell_accuracy(net, *heldout_batch(256, seed=12345))  # test-split prompts, unseen
    assert acc["cell_acc"] >= 0.95  # the bar; measured 0.999
    assert acc["occupied_cell_acc"] >= 0.95  # empty cells alone would give ~0.87


def test_shipped_net_tolerates_soft_edges_and_light_noise():
    rng = np.random.default_rng(99)
    test = load_split("test")
    scenes = sample_scenes([test[i] for i in rng.integers(0, len(test), size=256)], rng)
    g = torch.Generator().manual_seed(0)
    images = render(scenes, antialias=True)
    images = (images + 0.03 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    assert cell_accuracy(load_feature_net(), images, cell_labels(scenes))["cell_acc"] >= 0.95


def test_extract_features_batches_consistently():
    net = load_feature_net()
    x, _ = heldout_batch(40, seed=5)
    whole = extract_features(x, net, batch_size=64)
    torch.testing.assert_close(extract_features(x, net, batch_size=7), whole, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(extract_features(x, batch_size=40), whole, rtol=0, atol=0)  # default
    with pytest.raises(ValueError, match="batch_size: must be >= 1, got 0"):
        extract_features(x, net, batch_size=0)


def test_train_save_load_round_trip(tmp_path):
    out = tmp_path / "f.safetensors"
    stats = train_feature_net(out, steps=3, seed=1, batch_size=8)
    assert stats["steps"] == 3 and 0.0 <= stats["cell_acc"] <= 1.0
    net = load_feature_net(out)
    with safe_open(str(out), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
    assert info["seed"] == 1 and info["steps"] == 3
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not net.training


def test_training_and_loading_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="steps: must be >= 1, got 0"):
        train_feature_net(tmp_path / "x.safetensors", steps=0)
    with pytest.raises(ValueError, match="path: no feature net at"):
        load_feature_net(tmp_path / "missing.safetensors")


def test_loading_the_feature_net_leaves_the_global_generator_alone() -> None:
    """Its layers' random initialisation (overwritten by the weights) must not draw from torch's
    global generator: the evaluation loads it once per process, so a draw there made a resumed
    run's checkpointed RNG state differ from an uninterrupted run's."""
    torch.manual_seed(3)
    before = torch.get_rng_state()
    net = load_feature_net()
    assert torch.equal(torch.get_rng_state(), before)
    again = load_feature_net()  # and the weights are the file's, whatever the generator
    a, b = net.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
