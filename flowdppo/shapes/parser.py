"""Parse Shapes images into objects, exactly (docs/shapes.md, "The parser").

Pipeline, batched over N images with one ``scipy.ndimage.label`` call per colour:
1. Assign each pixel to the nearest of background + palette in RGB; a pixel farther than
   ``OFF_PALETTE`` from all of them is off-palette.
2. Connected components (8-connectivity) per colour.
3. Classify each component from its geometry: bounding box, fill ratio, filled bbox corners,
   and top-vs-bottom width (triangles are narrow on top). Components below ``SPECK_AREA`` pixels
   are specks; larger components that are not a recognisable 4–9 px shape are unknown blobs.
4. Cleanliness: no unknown blob; no speck or off-palette pixel away from a recognised object; at
   most ``EDGE_TOLERANCE`` such pixels touching objects (soft edges of generated images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flowdppo.shapes.world import BACKGROUND, COLORS, PALETTE

OFF_PALETTE = 75.0  # RGB distance; the closest two palette entries are ~176 apart
SPECK_AREA = 6  # components smaller than this are specks (the smallest object has 17 px)
EDGE_TOLERANCE = 8  # speck/off-palette pixels allowed per recognised object, within 1 px of it
MIN_SIDE, MAX_SIDE = 4, 9  # recognisable object box sides (rendered: 5..7)
_STRUCT = np.zeros((3, 3, 3), dtype=bool)
_STRUCT[1] = True  # 8-connectivity inside an image, never across the batch dimension


@dataclass(frozen=True)
class Detection:
    """A recognised object: colour and shape indices, centroid (x right, y down), area, box."""

    color: int
    shape: int
    cx: float
    cy: float
    area: int
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)


@dataclass
class ParsedImage:
    """Objects of one image, and why it is (un)clean."""

    objects: list[Detection]
    unknown_blobs: int
    stray_pixels: int  # specks / off-palette pixels away from recognised objects
    edge_pixels: int  # specks / off-palette pixels touching recognised objects

    @property
    def clean(self) -> bool:
        edge_ok = self.edge_pixels <= EDGE_TOLERANCE * len(self.objects)
        return self.unknown_blobs == 0 and self.stray_pixels == 0 and edge_ok


def assign_colors(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] → int8 [N, H, W]: -1 background, 0..4 palette index, 5 off-palette."""
    refs = np.concatenate([BACKGROUND[None], PALETTE]).astype(np.float32)  # [6, 3]
    d2 = ((images[..., None, :].astype(np.float32) - refs) ** 2).sum(-1)  # [N, H, W, 6]
    idx = d2.argmin(-1).astype(np.int8) - 1
    idx[d2.min(-1) > OFF_PALETTE**2] = len(COLORS)
    return idx


def classify(mask: np.ndarray) -> int:
    """Shape index of a component's boolean crop [h, w] (its bounding box), or -1 if unknown."""
    h, w = mask.shape
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE and abs(h - w) <= 2):
        return -1
    fill = mask.sum() / (h * w)
    corners = int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1])
    rows = mask.sum(1)  # [h] width of each row
    third = -(-h // 3)
    taper = rows[-third:].mean() - rows[:third].mean()  # > 0: wider at the bottom
    if corners >= 3 and fill >= 0.85:
        return 1  # square
    if taper >= 0.3 * w and 0.45 <= fill <= 0.8 and not (mask[0, 0] or mask[0, -1]):
        return 2  # triangle
    if corners <= 1 and abs(taper) < 0.3 * w and 0.65 <= fill <= 0.92:
        return 0  # circle
    return -1


def parse_images(images: np.ndarray) -> list[ParsedImage]:
    """Parse uint8 images [N, H, W, 3] (see the module docstring)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        # float images in [0, 1] would otherwise all be "background": clean and empty, silently
        got = getattr(images, "dtype", type(images))
        raise ValueError(
            f"images: expected a uint8 numpy array [N, H, W, 3] (render.to_uint8), got {got}"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected shape [N, H, W, 3], got {images.shape}")
    n = images.shape[0]
    idx = assign_colors(images)
    objects: list[list[Detection]] = [[] for _ in range(n)]
    unknown = np.zeros(n, dtype=np.int64)
    loose = idx == len(COLORS)  # [N, H, W] off-palette, later also specks
    zone = np.zeros(idx.shape, dtype=bool)  # recognised objects' boxes dilated by 1 px
    for c in range(len(COLORS)):
        labels, _ = ndimage.label(idx == c, structure=_STRUCT)
        for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            i, ys, xs = sl[0].start, sl[1], sl[2]
            crop = labels[i, ys, xs] == lab
            area = int(crop.sum())
            if area < SPECK_AREA:
                loose[i, ys, xs] |= crop
                continue
            shape = classify(crop)
            if shape < 0:
                unknown[i] += 1
                continue
            yy, xx = np.nonzero(crop)
            box = (ys.start, xs.start, ys.stop, xs.stop)
            det = Detection(c, shape, xs.start + xx.mean(), ys.start + yy.mean(), area, box)
            objects[i].append(det)
            zone[i, max(box[0] - 1, 0) : box[2] + 1, max(box[1] - 1, 0) : box[3] + 1] = True
    stray = (loose & ~zone).sum((1, 2))
    edge = (loose & zone).sum((1, 2))
    return [ParsedImage(objects[i], int(unknown[i]), int(stray[i]), int(edge[i])) for i in range(n)]
