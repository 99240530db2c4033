"""Rollout speed and outcome with ``sampling.untrained_precision`` full against reduced.

The default rollout of ``flowdppo train`` (P = 16 training prompts × G = 8, T = 10, CFG 3, one
trained Flow-SDE step drawn from steps 0–2) on the shipped base, twice from the same noises: all
steps in float32, and the untrained steps with the transformer blocks in bfloat16. Reported: the
wall-clock ratio (best of ``--repeats``, the two settings interleaved, so both see the same
machine), and what the reward sees: TIFA and strict means, and the share of samples whose strict
outcome is the same.

    .venv/bin/python benchmarks/shapes_rollout_precision.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch

from flowdppo.core import sample
from flowdppo.models.shapes import ShapesPolicy
from flowdppo.shapes.prompts import CATEGORIES, load_split
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import score_images


def rollout(policy: ShapesPolicy, prompts: list[str], step: int, reduced: bool, seed: int):
    """One rollout batch (forward batches of 64 as the trainer's default); images [N, 3, 32, 32]."""
    out = []
    for lo in range(0, len(prompts), 64):
        chunk = prompts[lo : lo + 64]
        g = torch.Generator().manual_seed(seed + lo)
        init = torch.randn(len(chunk), *policy.latent_shape, generator=g)
        noise = torch.randn(len(chunk), 1, *policy.latent_shape, generator=g)
        cond = policy.encode_prompts(chunk)

        def velocity(x, s, c=cond):
            return policy.velocity(x, s, c, 3.0)

        def untrained(x, s, c=cond):
            with policy.reduced_precision() if reduced else nullcontext():
                return policy.velocity(x, s, c, 3.0)

        res = sample(
            velocity,
            init,
            policy.sigmas(10),
            sampler="flow_sde",
            eta=0.7,
            train_steps=[step],
            noise=noise,
            untrained_velocity_fn=untrained,
        )
        out.append(policy.decode(res.latents))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    policy = ShapesPolicy.from_pretrained()
    train = [s for s in load_split("train") if s.category in CATEGORIES[2:5]]
    rng = np.random.default_rng(0)
    specs = [train[i] for i in rng.choice(len(train), 16, replace=False) for _ in range(8)]
    prompts = [s.text for s in specs]
    times: dict[bool, list[float]] = {False: [], True: []}
    scores = {}
    with torch.no_grad():
        rollout(policy, prompts[:64], 0, True, 0)  # warm-up of both kernel sets
        rollout(policy, prompts[:64], 0, False, 0)
        for r in range(a.repeats):
            for reduced in (False, True):
                t = time.perf_counter()
                images = rollout(policy, prompts, r % 3, reduced, 1000 * r)
                times[reduced].append(time.perf_counter() - t)
                s = score_images(to_uint8(images), specs)
                scores.setdefault(reduced, []).append((s.tifa, s.geneval))
    full, red = min(times[False]), min(times[True])
    print(f"{len(prompts)} samples per rollout, {a.threads} threads, best of {a.repeats}")
    print(f"full precision {full:.2f} s, reduced {red:.2f} s: reduced / full = {red / full:.2f}")
    tifa = {k: np.mean([t.mean() for t, _ in v]) for k, v in scores.items()}
    strict = {k: np.mean([g.mean() for _, g in v]) for k, v in scores.items()}
    same = np.mean(
        [(gf == gr).mean() for (_, gf), (_, gr) in zip(scores[False], scores[True], strict=True)]
    )
    print(
        f"TIFA {tifa[False]:.3f} (full) vs {tifa[True]:.3f} (reduced); strict "
        f"{strict[False]:.3f} vs {strict[True]:.3f}; same strict outcome in {same:.1%} of samples"
    )


if __name__ == "__main__":
    main()
