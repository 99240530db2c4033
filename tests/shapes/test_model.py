"""The Shapes model's position tables: closed forms, and what they are for."""

from __future__ import annotations

import math

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
    must be on the scale of the word embeddings (the first base model had both at 0.02: its
    encoder learned a bag of words, docs/tuning.md "Session 5")."""
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
