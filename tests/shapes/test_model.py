"""The Shapes model's position tables: closed forms, and what they are for."""

from __future__ import annotations

import math

import pytest
import torch

from flowdppo.shapes.model import ShapesFlowModel, sincos_1d, sincos_2d
from flowdppo.shapes.world import GRID


def test_sincos_1d_matches_its_closed_form():
    dim, period = 8, 100.0
    got = sincos_1d(torch.tensor([0, 3]), dim, max_period=period)
    for row, p in zip(got, (0, 3), strict=True):
        for i in range(dim // 2):
            f = period ** (-i / (dim // 2))
            assert math.isclose(row[i].item(), math.sin(p * f), abs_tol=1e-6)
            assert math.isclose(row[dim // 2 + i].item(), math.cos(p * f), abs_tol=1e-6)
    # every row has norm sqrt(dim / 2) (sin² + cos² = 1 per frequency)
    torch.testing.assert_close(got.norm(dim=1), torch.full((2,), math.sqrt(dim / 2)))


def test_sincos_2d_encodes_row_then_column_in_row_major_order():
    dim = 16
    table = sincos_2d(GRID, dim)
    assert table.shape == (GRID * GRID, dim)
    for token in range(GRID * GRID):
        r, c = divmod(token, GRID)
        torch.testing.assert_close(
            table[token, : dim // 2], sincos_1d(torch.tensor([r]), dim // 2)[0]
        )
        torch.testing.assert_close(
            table[token, dim // 2 :], sincos_1d(torch.tensor([c]), dim // 2)[0]
        )


def test_fresh_model_sees_positions_above_the_noise():
    """At σ = 1 an image token's patch features are noise. A fresh model's position table must
    separate the 16 cells by more than that noise separates tokens, and the text position table
    must be on the scale of the word embeddings (shapes-base-v1 had both at 0.02: its encoder
    learned a bag of words, docs/experiments/base-model.md, "Position tables")."""
    torch.manual_seed(0)
    model = ShapesFlowModel()
    pos = model.img_pos.detach()
    nearest = torch.cdist(pos, pos).add(torch.eye(len(pos)) * 1e9).min()
    assert nearest > 2.0
    words = model.text.embed.weight.detach().norm(dim=1).mean()
    text_pos = model.text.pos.detach().norm(dim=1).mean()
    assert 0.5 < text_pos / words < 2.0
    # the noise part: patch tokens of pure noise, at initialisation
    with torch.no_grad():
        tokens = model.patch(model.stem(torch.randn(8, 3, 32, 32))).flatten(2).transpose(1, 2)
    assert pos.norm(dim=1).mean() > 2 * tokens.norm(dim=-1).mean()


def test_bfloat16_blocks_run_in_bfloat16_and_stay_close():
    """``block_dtype``: the transformer blocks run in bfloat16, the stem, the head and the skip of
    the noisy input in float32 (what each layer computes in is checked, not a measured gap to a
    whole-model autocast: that gap depends on the CPU's kernels, 15% on one, 0.4% on another)."""
    from flowdppo.models.shapes import ShapesPolicy, load_base_model
    from flowdppo.shapes.model import tokenize

    model, _ = load_base_model()
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(16, 3, 32, 32, generator=g), torch.full((16,), 0.5)
    cond = model.encode_text(tokenize(["a red circle to the left of a blue square"] * 16, 12))
    seen: dict[str, torch.dtype] = {}
    layers = {"block": model.blocks[0].fc1, "stem": model.stem, "head": model.head_out}
    for name, layer in layers.items():
        layer.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    with torch.no_grad():
        full = model(x, sigma, cond["text"], cond["mask"])
        assert set(seen.values()) == {torch.float32}
        model.block_dtype = torch.bfloat16
        blocks = model(x, sigma, cond["text"], cond["mask"])
        model.block_dtype = None
    assert seen == {"block": torch.bfloat16, "stem": torch.float32, "head": torch.float32}
    assert blocks.dtype == torch.float32
    # A bfloat16 rounding errs by at most u = 2^-9 ≈ 2e-3 relative (RMS u/√3 ≈ 1.1e-3). Autocast
    # rounds each block linear's input and weight and accumulates in float32; the roundings of
    # different layers are independent, so in norm they add in quadrature, and the residual
    # stream, the head and the σ·x skip stay float32: rel(v) = O(u) (0.5u measured on two CPUs).
    # 2.5u bounds it with room for the four blocks' growth; a float32 run (0) fails the left side.
    rel = float((blocks - full).norm() / full.norm())
    assert 0 < rel < 5e-3

    policy = ShapesPolicy(model)
    with policy.reduced_precision():
        assert model.block_dtype == torch.bfloat16
    assert model.block_dtype is None


def test_velocity_skip_adds_sigma_times_the_input():
    """``velocity_skip``: v = σ·x + the network; the head starts at zero, so a fresh model's v is
    σ·x exactly, and the skip is recorded in the config a checkpoint stores."""
    from flowdppo.shapes.model import ShapesModelConfig, tokenize

    tiny = dict(width=32, depth=1, heads=2, text_width=16, text_depth=1)
    torch.manual_seed(0)
    plain = ShapesFlowModel(ShapesModelConfig(**tiny))
    torch.manual_seed(0)
    skip = ShapesFlowModel(ShapesModelConfig(**tiny, velocity_skip=True))
    x, sigma = torch.randn(3, 3, 32, 32), torch.tensor([1.0, 0.5, 0.1])
    cond = skip.encode_text(tokenize(["a red circle"] * 3, 12))
    with torch.no_grad():
        assert torch.equal(plain(x, sigma, cond["text"], cond["mask"]), torch.zeros_like(x))
        v = skip(x, sigma, cond["text"], cond["mask"])
    torch.testing.assert_close(v, sigma[:, None, None, None] * x, atol=0, rtol=0)
    assert skip.cfg.to_dict()["velocity_skip"] is True


def test_lora_on_the_frozen_text_encoder_is_refused_and_the_flow_network_trains():
    from flowdppo.models.shapes import ShapesPolicy, load_base_model

    model, _ = load_base_model()
    with pytest.raises(ValueError, match=r"model\.lora_target_modules.*text\.encoder"):
        ShapesPolicy(model, lora_target_modules=["linear1", "qkv"])
    # Targets in the flow network (including those fed by the cached text encoding) get
    # gradients through a velocity from a cached prompt encoding, as in the trainer's update.
    policy = ShapesPolicy(
        load_base_model()[0], lora_target_modules=["qkv", "pool_mlp.0", "text_proj"]
    )
    cond = policy.encode_prompts(["a red circle to the left of a blue square"])
    assert not cond["text"].requires_grad  # encoded once, without gradients
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    policy.velocity(x, torch.tensor([0.9]), cond, 3.0).square().sum().backward()
    trained = [(n, p) for n, p in policy.model.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] for n, _ in trained} == {"blocks", "pool_mlp", "text_proj"}
    # B starts at 0, so A's gradient is 0 at first; every B's is not.
    assert all(p.grad is not None for _, p in trained)
    assert all(float(p.grad.abs().sum()) > 0 for n, p in trained if "lora_B" in n)
