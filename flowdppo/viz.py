"""Pictures a person would rather look at: sample grids with captions and pass/fail marks."""

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
    n = images.shape[0]
    if len(captions) != n:
        raise ValueError(f"save_grid: {n} images but {len(captions)} captions")
    marks = marks if marks is not None else [None] * n
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    font = ImageFont.load_default(size=11)
    text_h = 44
    sheet = Image.new("RGB", (cols * (cell + 8), rows * (cell + 8 + text_h)), (255, 255, 255))
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
        x0, y0 = c * (cell + 8) + 4, r * (cell + 8 + text_h) + 4
        frame = {True: (30, 170, 60), False: (210, 40, 40), None: (200, 200, 200)}[marks[i]]
        draw.rectangle([x0 - 3, y0 - 3, x0 + cell + 2, y0 + cell + 2], outline=frame, width=3)
        tile = Image.fromarray(np.ascontiguousarray(arr[i])).resize((cell, cell), Image.NEAREST)
        sheet.paste(tile, (x0, y0))
        lines = textwrap.wrap(captions[i], width=cell // 6)[:3]
        draw.multiline_text(
            (x0, y0 + cell + 4), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=1
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
