"""Hand-built Shapes images for the tests."""

import numpy as np

from flowdppo.shapes.world import BACKGROUND, PALETTE, shape_mask


def blank(n: int = 1) -> np.ndarray:
    """n background-only uint8 images [n, 32, 32, 3]."""
    return np.broadcast_to(BACKGROUND, (n, 32, 32, 3)).copy()


def paint(img: np.ndarray, shape: str, color: int, size: int, y: int, x: int) -> np.ndarray:
    """Paint a world shape of palette colour ``color`` with its box's top-left at (y, x), in place."""
    m = shape_mask(shape, size)
    img[y : y + size, x : x + size][m] = PALETTE[color]
    return img
