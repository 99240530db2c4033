"""Does a long run leak memory? Many iterations of a tiny run, resident memory sampled.

A tiny random Shapes model (the tests' ``tests/trainer/tiny.py``), evaluation every
``--eval-every`` iterations and checkpoints every ``--save-every`` (so those paths are exercised
too), ``--iters`` iterations in one process; the resident set size (``/proc/self/statm``) is
sampled every ``--every`` iterations after the first ``--skip`` (allocator warm-up). Printed: the
samples, the least-squares slope in KiB per iteration with its 95% interval, and the growth
extrapolated to 10,000 iterations. A slope whose interval holds 0, or a few KiB per iteration
(allocator noise), is no leak; a leak of one rollout's tensors would be ~MB per iteration.

    .venv/bin/python benchmarks/memory_soak.py [--iters 600] [--every 20] [--skip 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import torch


def rss_kib() -> float:
    """Resident set size of this process in KiB (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys on xs and the half-width of its 95% interval (Student t)."""
    from scipy import stats

    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = [y - my - b * (x - mx) for x, y in zip(xs, ys, strict=True)]
    se = math.sqrt(sum(r * r for r in resid) / (n - 2) / sxx) if n > 2 else math.nan
    return b, float(stats.t.ppf(0.975, n - 2) * se) if n > 2 else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--skip", type=int, default=100, help="iterations before the first sample")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from trainer.tiny import build_tiny_checkpoint, tiny_config

    from flowdppo.trainer.trainer import Trainer

    tmp = Path(tempfile.mkdtemp())
    cfg = tiny_config(
        build_tiny_checkpoint(tmp / "tiny.safetensors"),
        f"eval.every={a.eval_every}",
        f"train.save_every={a.save_every}",
        "train.sample_every=1000000",
        f"train.max_iters={a.iters}",
        "train.kl_ref_every=10",
    )
    trainer = Trainer(cfg, tmp / "run")
    xs, ys = [], []
    for it in range(1, a.iters + 1):
        trainer.step()
        if it % a.eval_every == 0:
            trainer.evaluate(grid=False)
        if it % a.save_every == 0:
            trainer.save()
        if it >= a.skip and it % a.every == 0:
            xs.append(float(it))
            ys.append(rss_kib())
            print(f"iteration {it}: RSS {ys[-1] / 1024:.1f} MiB", flush=True)
    b, hw = slope(xs, ys)
    print(
        f"\nRSS slope: {b:.2f} ± {hw:.2f} KiB per iteration (95%, {len(xs)} samples from "
        f"iteration {int(xs[0])} to {int(xs[-1])}); over 10,000 iterations: {b * 1e4 / 1024:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
