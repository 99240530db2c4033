"""Vectorised renderer: scenes → 32×32 RGB images (docs/shapes.md, "The world").

Every image is assembled from precomputed 8×8 cell patches with one gather, so a batch of N
scenes renders with a handful of numpy operations (tens of thousands of images per second).
"""

from __future__ import annotations

import numpy as np
import torch

from flowdppo.shapes.world import (
    BACKGROUND,
    CELL,
    GRID,
    IMAGE_SIZE,
    PALETTE,
    PATCHES,
    SIZES,
    Scenes,
)


def render_uint8(scenes: Scenes, antialias: bool = False) -> np.ndarray:
    """Render scenes to uint8 images [N, 32, 32, 3].

    With ``antialias`` the edges are softened (``_soften``: each pixel 0.75 itself + 0.125 its
    right + 0.125 its lower neighbour); the exact rewards are defined on the hard render.
    """
    occupied = scenes.shape >= 0  # [N, 16]
    s = np.where(occupied, scenes.shape, 0)
    masks = PATCHES[s, scenes.size - SIZES[0], scenes.oy, scenes.ox]  # [N, 16, 8, 8]
    masks &= occupied[:, :, None, None]
    colors = PALETTE[scenes.color]  # [N, 16, 3]
    cells = np.where(masks[..., None], colors[:, :, None, None, :], BACKGROUND)  # [N,16,8,8,3]
    n = len(scenes)
    img = cells.reshape(n, GRID, GRID, CELL, CELL, 3)  # [N, row, col, y, x, 3]
    img = img.transpose(0, 1, 3, 2, 4, 5).reshape(n, IMAGE_SIZE, IMAGE_SIZE, 3)
    if antialias:
        img = _soften(img)
    return np.ascontiguousarray(img)


def _soften(img: np.ndarray) -> np.ndarray:
    """Mild anti-aliasing: average each pixel with its right/down neighbours at weight 1/8."""
    f = img.astype(np.float32)
    right = np.concatenate([f[:, :, 1:], f[:, :, -1:]], axis=2)
    down = np.concatenate([f[:, 1:], f[:, -1:]], axis=1)
    out = 0.75 * f + 0.125 * right + 0.125 * down
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float32 [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [0, 1] → uint8 [N, H, W, 3] (clamped, rounded)."""
    x = images.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def render(scenes: Scenes, antialias: bool = False) -> torch.Tensor:
    """Render scenes to float32 images [N, 3, 32, 32] in [0, 1]."""
    return to_tensor(render_uint8(scenes, antialias))
