"""Rollout speed and outcome with ``sampling.untrained_precision`` full against reduced.

The default rollout of ``flowdppo train`` (the trainer's ``collect`` with the default config:
P = 16 training prompts × G = 8, T = 10, CFG 3, one trained Flow-SDE step from steps 0–2, the
reference pass and the rewards alongside) on the shipped base, twice from the same noises: all
steps in float32, and the untrained steps with the transformer blocks in bfloat16. Reported: the
wall-clock ratio (best of ``--repeats``, the two settings interleaved, so both see the same
machine), and what the reward sees: TIFA and strict means, and the share of samples whose strict
outcome is the same.

    .venv/bin/python benchmarks/shapes_rollout_precision.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from flowdppo.config import load_config
from flowdppo.shapes.prompts import CATEGORIES, load_split
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import score_images
from flowdppo.trainer.build import build_policy, build_run_rewards
from flowdppo.trainer.experience import collect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfgs = {
        p: load_config(None, [f"sampling.untrained_precision={p}"]) for p in ("full", "reduced")
    }
    policy = build_policy(cfgs["full"], torch.device("cpu"))  # the default: the shipped base
    rewards = build_run_rewards(cfgs["full"])
    train = [s for s in load_split("train") if s.category in CATEGORIES[2:5]]
    rng = np.random.default_rng(0)
    specs = [train[i] for i in rng.choice(len(train), 16, replace=False) for _ in range(8)]
    prompts, ids = [s.text for s in specs], list(range(len(specs)))
    times: dict[str, list[float]] = {"full": [], "reduced": []}
    scores: dict[str, list] = {"full": [], "reduced": []}
    with ThreadPoolExecutor(1) as pool:

        def rollout(p: str, it: int):
            # The trainer's own rollout (forward batches, reference pass, rewards alongside).
            return collect(
                policy, cfgs[p], prompts, [{}] * len(ids), ids, it, [it % 3], rewards, pool
            )

        rollout("reduced", 0), rollout("full", 0)  # warm-up of both kernel sets
        for r in range(1, a.repeats + 1):
            for p in ("full", "reduced"):
                exp = rollout(p, r)
                times[p].append(exp.timings["time/rollout_s"])
                scores[p].append(score_images(to_uint8(exp.images), specs))
    full, red = min(times["full"]), min(times["reduced"])
    print(f"{len(prompts)} samples per rollout, {a.threads} threads, best of {a.repeats}")
    print(f"full precision {full:.2f} s, reduced {red:.2f} s: reduced / full = {red / full:.2f}")
    tifa = {p: np.mean([s.tifa.mean() for s in v]) for p, v in scores.items()}
    strict = {p: np.mean([s.geneval.mean() for s in v]) for p, v in scores.items()}
    same = np.mean(
        [
            (f.geneval == r.geneval).mean()
            for f, r in zip(scores["full"], scores["reduced"], strict=True)
        ]
    )
    print(
        f"TIFA {tifa['full']:.3f} (full) vs {tifa['reduced']:.3f} (reduced); strict "
        f"{strict['full']:.3f} vs {strict['reduced']:.3f}; same strict outcome in {same:.1%} of samples"
    )


if __name__ == "__main__":
    main()
