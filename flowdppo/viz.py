"""Pictures a person would rather look at: sample grids with captions and pass/fail marks
(PNG for images, animated GIF for videos)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def save_grid(
    images: torch.Tensor,
    captions: list[str],
    path: str | Path,
    *,
    marks: list[bool | None] | None = None,
    cols: int = 8,
    cell: int = 128,
) -> Path:
    """Save images [N, 3, H, W] in [0, 1] as a captioned PNG grid; marks colour the frame
    green (pass) / red (fail). Returns the path."""
    sheet = _sheet(images, captions, marks, cols, cell)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def save_video_grid(
    videos: torch.Tensor,
    captions: list[str],
    path: str | Path,
    *,
    marks: list[bool | None] | None = None,
    cols: int = 8,
    cell: int = 128,
    fps: float = 16.0,
) -> Path:
    """Save videos [N, F, 3, H, W] in [0, 1] as an animated GIF of F captioned grids (GIF frame
    f: every video's frame f, with a ``f/F`` counter; looping, ``fps`` frames per second, Wan's 16
    by default, to GIF's 10 ms: ``gif_delay_ms``). Pillow's GIF writer quantises each frame to 256 colours. Returns the path."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(
            f"save_video_grid: videos must be [N, F, 3, H, W], got {tuple(videos.shape)}"
        )
    if not fps > 0:
        raise ValueError(f"save_video_grid: fps must be > 0, got {fps}")
    count = videos.shape[1]
    font = ImageFont.load_default(size=11)
    sheets = []
    for f in range(count):
        sheet = _sheet(videos[:, f], captions, marks, cols, cell)
        # The counter also keeps identical frames apart (Pillow merges repeated GIF frames).
        ImageDraw.Draw(sheet).text(
            (4, sheet.height - 14), f"{f + 1}/{count}", fill=(0, 0, 0), font=font
        )
        sheets.append(sheet)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheets[0].save(
        path, save_all=True, append_images=sheets[1:], duration=gif_delay_ms(fps), loop=0
    )
    return path


def gif_delay_ms(fps: float) -> int:
    """A GIF frame's delay in ms for ``fps``: GIF stores hundredths of a second, so
    ``10 · max(1, round(100 / fps))`` (16 fps: 60 ms, played at 16.7 fps)."""
    return 10 * max(1, round(100 / fps))


def save_samples(
    images: torch.Tensor,
    captions: list[str],
    path: str | Path,
    *,
    marks: list[bool | None] | None = None,
    cols: int = 8,
) -> Path:
    """Images [N, 3, H, W]: the PNG grid at ``path``; videos [N, F, 3, H, W]: the animated GIF
    grid at ``path`` with the suffix ``.gif``. Returns the path written."""
    if images.ndim == 5:
        return save_video_grid(
            images, captions, Path(path).with_suffix(".gif"), marks=marks, cols=cols
        )
    return save_grid(images, captions, path, marks=marks, cols=cols)


def _sheet(
    images: torch.Tensor,
    captions: list[str],
    marks: list[bool | None] | None,
    cols: int,
    cell: int,
) -> Image.Image:
    """The captioned grid of images [N, 3, H, W] in [0, 1]: tiles ``cell`` pixels wide, as tall
    as the images' aspect ratio makes them (``cell`` square for square images)."""
    n = images.shape[0]
    if len(captions) != n:
        raise ValueError(f"save_grid: {n} images but {len(captions)} captions")
    marks = marks if marks is not None else [None] * n
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    tile_w, tile_h = cell, max(1, round(cell * images.shape[2] / images.shape[3]))
    font = ImageFont.load_default(size=11)
    text_h = 44
    sheet = Image.new("RGB", (cols * (tile_w + 8), rows * (tile_h + 8 + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    arr = (
        (images.detach().float().clamp(0, 1) * 255)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .cpu()
        .numpy()
    )
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * (tile_w + 8) + 4, r * (tile_h + 8 + text_h) + 4
        frame = {True: (30, 170, 60), False: (210, 40, 40), None: (200, 200, 200)}[marks[i]]
        draw.rectangle([x0 - 3, y0 - 3, x0 + tile_w + 2, y0 + tile_h + 2], outline=frame, width=3)
        tile = Image.fromarray(np.ascontiguousarray(arr[i])).resize((tile_w, tile_h), Image.NEAREST)
        sheet.paste(tile, (x0, y0))
        lines = textwrap.wrap(captions[i], width=cell // 6)[:3]
        draw.multiline_text(
            (x0, y0 + tile_h + 4), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=1
        )
    return sheet
