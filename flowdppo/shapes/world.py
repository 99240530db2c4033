"""The Shapes world: palette, shapes, the 4×4 cell grid, and scenes (docs/shapes.md, "The world").

A scene is a set of objects, one per occupied cell of a 4×4 grid of 8-px cells on a 32×32 image.
An object is (shape, colour, size 5–7 px, offset inside its cell). Offsets satisfy
``offset + size <= 7`` so the last row/column of every cell stays background: objects in
neighbouring cells never touch (not even diagonally), which keeps the parser exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
CELL = 8
GRID = IMAGE_SIZE // CELL  # 4 cells per side, 16 cells
NUM_CELLS = GRID * GRID
SIZES = (5, 6, 7)
MAX_EXTENT = CELL - 1  # offset + size <= 7: a 1-px background gap to the next cell

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "white")
# RGB uint8. Chosen far apart (min pairwise distance ~150) so colour assignment is unambiguous.
PALETTE = np.array(
    [
        [220, 40, 40],  # red
        [40, 180, 60],  # green
        [50, 80, 230],  # blue
        [235, 215, 40],  # yellow
        [245, 245, 245],  # white
    ],
    dtype=np.uint8,
)
BACKGROUND = np.array([40, 40, 40], dtype=np.uint8)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean [size, size] mask of a shape, pixel centres tested against the ideal outline.

    circle: centre ((s-1)/2, (s-1)/2), radius s/2. triangle: apex up, base on the last row,
    |x + 0.5 - s/2| <= (y + 1)/2 on row y. square: full.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape: unknown {shape!r}; expected one of {SHAPES}")
    if size not in SIZES:
        raise ValueError(f"size: {size} not in {SIZES}")
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        c = (size - 1) / 2
        return (y - c) ** 2 + (x - c) ** 2 <= (size / 2) ** 2
    return np.abs(x + 0.5 - size / 2) <= (y + 1) / 2


def _build_patches() -> np.ndarray:
    """All cell patches: bool [shape, size_idx, oy, ox, CELL, CELL] (invalid offsets empty)."""
    n_off = MAX_EXTENT - min(SIZES) + 1
    patches = np.zeros((len(SHAPES), len(SIZES), n_off, n_off, CELL, CELL), dtype=bool)
    for si, shape in enumerate(SHAPES):
        for zi, size in enumerate(SIZES):
            m = shape_mask(shape, size)
            for oy in range(MAX_EXTENT - size + 1):
                for ox in range(MAX_EXTENT - size + 1):
                    patches[si, zi, oy, ox, oy : oy + size, ox : ox + size] = m
    return patches


PATCHES = _build_patches()


@dataclass
class Scenes:
    """A batch of N scenes as per-cell integer arrays, each [N, 16] (cell = row * 4 + col).

    shape: -1 for an empty cell, else an index into SHAPES; color: index into COLORS;
    size: 5..7; oy, ox: offset of the object's box inside its cell (offset + size <= 7).
    """

    shape: np.ndarray
    color: np.ndarray
    size: np.ndarray
    oy: np.ndarray
    ox: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Scenes:
        z = np.zeros((n, NUM_CELLS), dtype=np.int64)
        return cls(shape=z - 1, color=z.copy(), size=z + SIZES[0], oy=z.copy(), ox=z.copy())

    def __len__(self) -> int:
        return int(self.shape.shape[0])


def place_object(
    scenes: Scenes, i: int, cell: int, shape: int, color: int, rng: np.random.Generator
) -> None:
    """Put one object of random size and jitter into cell ``cell`` of scene ``i``."""
    size = int(rng.integers(SIZES[0], SIZES[-1] + 1))
    scenes.shape[i, cell] = shape
    scenes.color[i, cell] = color
    scenes.size[i, cell] = size
    scenes.oy[i, cell] = rng.integers(0, MAX_EXTENT - size + 1)
    scenes.ox[i, cell] = rng.integers(0, MAX_EXTENT - size + 1)
