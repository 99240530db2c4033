"""``flowdppo.viz``: sample grids as PNG (images) and animated GIF (videos)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from flowdppo.viz import gif_delay_ms, save_samples, save_video_grid


def test_videos_become_a_gif_of_f_grids_and_images_a_png(tmp_path) -> None:
    videos = torch.rand(3, 7, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    videos[2] = 0.5  # a still video: the frame counter keeps its GIF frames apart
    path = save_samples(videos, ["a", "b", "c"], tmp_path / "samples" / "iter_000001.png", cols=2)
    assert path == tmp_path / "samples" / "iter_000001.gif"
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 7 and im.info["loop"] == 0
        # 2 columns of 128-pixel-wide tiles, 64 high for the 1:2 videos; 2 rows.
        assert im.size == (2 * (128 + 8), 2 * (64 + 8 + 44))
        im.seek(3)
        tile = im.convert("RGB").crop((4 + 20, 4 + 10, 4 + 30, 4 + 20))  # inside video 0's tile
    # Frame 4 of video 0 (nearest-neighbour upscaled ×4), to GIF's 256-colour palette.
    expected = videos[0, 3, :, 10 // 4, 20 // 4]
    got = torch.tensor(tile.getpixel((0, 0)), dtype=torch.float32) / 255
    assert (got - expected).abs().max() < 0.15
    still = torch.rand(2, 3, 16, 16)
    png = save_samples(still, ["a", "b"], tmp_path / "grid.png")
    with Image.open(png) as im:
        assert png.suffix == ".png" and im.format == "PNG" and im.size == (2 * 136, 128 + 8 + 44)


def test_gif_delay_and_errors(tmp_path) -> None:
    assert [gif_delay_ms(f) for f in (16, 10, 24, 1000)] == [60, 100, 40, 10]
    with pytest.raises(ValueError, match=r"\[N, F, 3, H, W\]"):
        save_video_grid(torch.rand(2, 3, 8, 8), ["a", "b"], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="fps"):
        save_video_grid(torch.rand(1, 2, 3, 8, 8), ["a"], tmp_path / "x.gif", fps=0)
    with pytest.raises(ValueError, match="captions"):
        save_video_grid(torch.rand(1, 2, 3, 8, 8), ["a", "b"], tmp_path / "x.gif")
