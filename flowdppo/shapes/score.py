"""Exact Shapes scores: atoms of a prompt checked on a parsed image (docs/shapes.md, "Rewards").

- ``geneval`` (strict): 1 if the image is clean and every atom holds, else 0.
- ``tifa`` (dense): clean × (fraction of atoms that hold; the last atom, ``exact``, is "exactly
  the described objects, nothing more", see ``flowdppo.shapes.prompts``). Gating by cleanliness is what stops
  speckle from collecting presence credit and an empty image from collecting "clean" credit.
- ``object_size``: a competing objective: the mean area of recognised objects / 49 (a 7×7 box),
  0 without objects. Growing objects beyond the 5–7 px of the world eventually breaks the grid
  (objects touch, shapes leave the recognisable range), so it competes with ``geneval``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from flowdppo.shapes.parser import Detection, ParsedImage, parse_images
from flowdppo.shapes.prompts import PromptSpec

REL_MARGIN = 4.0  # px: centroids must differ by more than half a cell along the relation's axis


def relation_holds(relation: str, a: Detection, b: Detection) -> bool:
    """Whether ``a`` stands in ``relation`` to ``b`` (image y grows downwards)."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    checks = {
        "to the left of": dx < -REL_MARGIN,
        "to the right of": dx > REL_MARGIN,
        "above": dy < -REL_MARGIN,
        "below": dy > REL_MARGIN,
    }
    if relation not in checks:
        raise ValueError(f"relation: unknown {relation!r}; expected one of {list(checks)}")
    return checks[relation]


def check_atoms(spec: PromptSpec, parsed: ParsedImage) -> list[bool]:
    """Truth of each atom of ``spec.atoms()`` on the parsed image, in the same order."""
    found = [
        [o for o in parsed.objects if (o.color, o.shape) == (g.color, g.shape)] for g in spec.groups
    ]
    out: list[bool] = []
    for g, objs in zip(spec.groups, found, strict=True):
        out.append(len(objs) >= 1)
        if g.count > 1:
            out.append(len(objs) == g.count)
    if spec.relation is not None:
        rel = spec.relation
        out.append(any(relation_holds(rel, a, b) for a in found[0] for b in found[1]))
    wanted = Counter({(g.color, g.shape): g.count for g in spec.groups})
    out.append(Counter((o.color, o.shape) for o in parsed.objects) == wanted)  # "exact"
    return out


@dataclass
class ShapesScores:
    """Per-image scores [N] float32, and the cleanliness flag [N] bool."""

    geneval: np.ndarray
    tifa: np.ndarray
    object_size: np.ndarray
    clean: np.ndarray


def score_images(images: np.ndarray, specs: list[PromptSpec]) -> ShapesScores:
    """Score uint8 images [N, 32, 32, 3] against their prompts' specs."""
    if len(specs) != images.shape[0]:
        raise ValueError(f"specs: {len(specs)} prompts for {images.shape[0]} images")
    parsed = parse_images(images)
    n = len(parsed)
    geneval, tifa, size, clean = (np.zeros(n, np.float32) for _ in range(4))
    for i, (spec, p) in enumerate(zip(specs, parsed, strict=True)):
        atoms = check_atoms(spec, p)
        clean[i] = p.clean
        tifa[i] = p.clean * (sum(atoms) / len(atoms))
        geneval[i] = float(p.clean and all(atoms))
        size[i] = np.mean([o.area for o in p.objects]) / 49.0 if p.objects else 0.0
    return ShapesScores(geneval, tifa, size, clean.astype(bool))
