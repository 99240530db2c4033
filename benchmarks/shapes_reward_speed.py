"""Throughput of the Shapes world on one core: renderer, parser + scores, feature net.

Not a unit test. Run: ``.venv/bin/python benchmarks/shapes_reward_speed.py [N]``; prints images/s
(best of 3 repeats). Target for parser + score: >= 1000 images/s on one core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, before numpy/torch load their thread pools

import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flowdppo.shapes.features import extract_features, load_feature_net  # noqa: E402
from flowdppo.shapes.prompts import load_split, sample_scenes  # noqa: E402
from flowdppo.shapes.render import render_uint8, to_tensor  # noqa: E402
from flowdppo.shapes.score import score_images  # noqa: E402


def images_per_s(fn: Callable[[], object], n: int, repeats: int = 3) -> float:
    """n / (best wall time of ``repeats`` calls of fn)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main(n: int = 2000) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    test = load_split("test")
    specs = [test[i] for i in rng.integers(0, len(test), size=n)]
    scenes = sample_scenes(specs, rng)
    hard, soft = render_uint8(scenes), render_uint8(scenes, antialias=True)
    noise = rng.integers(0, 256, size=hard.shape, dtype=np.uint8)  # worst case: many components
    net = load_feature_net()
    rows = [
        ("sample_scenes (test prompts)", lambda: sample_scenes(specs, np.random.default_rng(1))),
        ("render_uint8 (hard)", lambda: render_uint8(scenes)),
        ("render_uint8 (antialias)", lambda: render_uint8(scenes, antialias=True)),
        ("parse + score (hard renders)", lambda: score_images(hard, specs)),
        ("parse + score (antialiased)", lambda: score_images(soft, specs)),
        ("parse + score (uniform noise)", lambda: score_images(noise, specs)),
        ("feature net features", lambda: extract_features(to_tensor(hard), net)),
    ]
    print(f"Shapes throughput, N = {n}, one thread (images/s, best of 3)")
    for name, fn in rows:
        print(f"  {name:32s} {images_per_s(fn, n):>10,.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
