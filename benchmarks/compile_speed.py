"""Iteration and evaluation speed of ``flowdppo train`` with ``model.compile`` off and on.

Two trainers with the default config (the Shapes base, P = 16 × G = 8, T = 10, CFG 3), one with
the network compiled (``torch.compile`` through ``nn.Module.compile``), in one process. The first
iteration of each is timed apart (it holds the compilation); then the two step in turn, so both
see the same machine, and the medians of ``time/iter_s`` (rollout, rewards and updates) give the
ratio. Then the run's evaluation (40-step ODE, CFG 3, ``--eval-n`` per category) twice each:
the first holds the compilation of its batch shapes, the second gives the ratio. Also reported:
how many iterations repay the iterations' compilation.

    .venv/bin/python benchmarks/compile_speed.py [--threads 2] [--iters 6] [--eval-n 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flowdppo.config import load_config
from flowdppo.trainer.evaluation import evaluate
from flowdppo.trainer.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=6, help="timed iterations of each, in turn")
    ap.add_argument("--eval-n", type=int, default=50, help="evaluation samples per category")
    a = ap.parse_args()
    names = ("eager", "compiled")
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            name: Trainer(
                load_config(
                    None,
                    [
                        f"model.compile={name == 'compiled'}",
                        "eval.every=0",
                        f"train.threads={a.threads}",
                        "train.save_every=1000",
                    ],
                ),
                Path(tmp) / name,
            )
            for name in names
        }
        first = {name: trainers[name].step()["time/iter_s"] for name in names}
        iters: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(a.iters):
            for name in names:
                iters[name].append(trainers[name].step()["time/iter_s"])
        evals: dict[str, list[float]] = {name: [] for name in names}
        for name in names:
            t = trainers[name]
            for _ in range(2):  # the first call compiles the evaluation's batch shapes
                start = time.perf_counter()
                evaluate(t.policy, t.cfg, t.rewards, None, a.eval_n)
                evals[name].append(time.perf_counter() - start)
    med = {name: statistics.median(v) for name, v in iters.items()}
    overhead = first["compiled"] - med["compiled"] - (first["eager"] - med["eager"])
    print(f"{a.threads} threads; median of {a.iters} iterations each, in turn")
    print("| | eager | compiled | eager / compiled |")
    print("|---|---|---|---|")
    print(
        f"| one iteration (s) | {med['eager']:.2f} | {med['compiled']:.2f} "
        f"| **{med['eager'] / med['compiled']:.2f}** |"
    )
    print(
        f"| first iteration (s) | {first['eager']:.1f} | {first['compiled']:.1f} "
        f"| compilation ≈ {overhead:.0f} s |"
    )
    (e1, e2), (c1, c2) = evals["eager"], evals["compiled"]
    print(f"| evaluation, {6 * a.eval_n} samples (s) | {e2:.1f} | {c2:.1f} | **{e2 / c2:.2f}** |")
    print(
        f"| first evaluation (s) | {e1:.1f} | {c1:.1f} | compilation ≈ {c1 - c2 - (e1 - e2):.0f} s |"
    )
    saved = med["eager"] - med["compiled"]
    if saved > 0:
        print(f"\ncompilation repaid after ≈ {overhead / saved:.0f} iterations")


if __name__ == "__main__":
    main()
