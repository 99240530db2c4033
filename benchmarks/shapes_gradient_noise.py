"""How much of the RL signal the rollout noise decides, and how noisy the policy gradient is.

Two measurements on the shipped Shapes base model, CFG 3, T = 10, Flow-SDE (docs/tuning.md,
"Why the accuracy reward learns slowly"):

``attribution``: for prompts of the hard categories, 12 initial noises × 12 draws of the
trained-step noise each; the share of the strict-reward variance that the trained-step noise
decides (the rest is decided by the initial noise, which no policy update can credit).

``per-step``: for 16 training prompts per category, one initial noise each, the ODE sample
against samples with Flow-SDE noise at one step k only (8 draws per k): the share of outcomes
(strict) that the noise of step k flips. It tells at which steps the outcome is still open, so
which steps a trained pool must contain.

``noise-scale``: n independent policy-gradient estimates (P = 8 prompts × G = 8 samples each,
group advantages, the on-policy Flow-DPPO gradient = REINFORCE) of the LoRA parameters at the
base model. With g_i = s + noise_i: |s|² = (n |mean g|² − mean |g_i|²) / (n − 1) and the noise
variance tr Σ = mean |g_i|² − |s|², so the gradient noise scale B = samples per estimate × tr Σ /
|s|² is the batch (in samples) at which one estimate's signal equals its noise (McCandlish et
al., 2018). An optimizer step on far fewer samples than B is mostly noise.

    .venv/bin/python benchmarks/shapes_gradient_noise.py attribution
    .venv/bin/python benchmarks/shapes_gradient_noise.py per-step --categories two_object color_attr position counting
    .venv/bin/python benchmarks/shapes_gradient_noise.py noise-scale --n 24 --reward tifa object_size
    .venv/bin/python benchmarks/shapes_gradient_noise.py noise-scale --n 24 --categories counting
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from flowdppo.core import group_advantages, recompute_step, sample
from flowdppo.models.shapes import ShapesPolicy
from flowdppo.shapes.evaluate import eval_specs
from flowdppo.shapes.prompts import CATEGORIES, load_split
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import score_images

CFG, T = 3.0, 10
HARD = ("two_object", "color_attr", "counting", "position")


def _rollout(policy, texts, init, steps, eta, noise=None, generator=None):
    cond = policy.encode_prompts(texts)

    def velocity(x, s):
        return policy.velocity(x, s, cond, CFG)

    out = sample(
        velocity,
        init,
        policy.sigmas(T),
        sampler="flow_sde",
        eta=eta,
        train_steps=steps,
        noise=noise,
        generator=generator,
    )
    return out, velocity


def attribution(policy, eta: float, steps: list[int], n0: int = 12, m: int = 12) -> None:
    specs = eval_specs(4, split="train")
    for cat in HARD:
        shares = []
        for i, spec in enumerate(s for s in specs if s.category == cat):
            g = torch.Generator().manual_seed(i)
            init = torch.randn(n0, *policy.latent_shape, generator=g).repeat_interleave(m, 0)
            with torch.no_grad():
                out, _ = _rollout(policy, [spec.text] * (n0 * m), init, steps, eta, generator=g)
            r = score_images(to_uint8(policy.decode(out.latents)), [spec] * (n0 * m)).geneval
            p = r.reshape(n0, m).mean(1)
            total = r.var()
            if total > 0:
                shares.append((p * (1 - p)).mean() / total)
        print(
            f"eta {eta} trained steps {steps} {cat:11s}: trained-step noise decides "
            f"{np.mean(shares):.0%} of the strict-reward variance ({len(shares)} prompts)"
        )


def _strict(policy, specs, init, steps: list[int], eta: float, g=None) -> np.ndarray:
    with torch.no_grad():
        out, _ = _rollout(policy, [s.text for s in specs], init, steps, eta, generator=g)
    return score_images(to_uint8(policy.decode(out.latents)), specs).geneval


def per_step(policy, eta: float, cats: tuple[str, ...], n: int = 16, m: int = 8) -> None:
    for cat in cats:
        specs = eval_specs(n, split="train", categories=(cat,))
        init = torch.randn(n, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
        ode = _strict(policy, specs, init, [], eta)
        flips = []
        for k in range(T):
            g = torch.Generator().manual_seed(k + 1)
            draws = np.stack([_strict(policy, specs, init, [k], eta, g) for _ in range(m)])
            flips.append(f"{k}: {(draws != ode[None]).mean():.2f}")  # draws [m, n]
        print(
            f"eta {eta} {cat:13s} ODE strict {ode.mean():.2f}; flipped by step " + ", ".join(flips)
        )


def noise_scale(
    policy,
    reward: str,
    eta: float,
    steps: list[int],
    n: int,
    cats: tuple[str, ...],
    group_noise: str = "independent",
    p: int = 8,
    g: int = 8,
):
    specs = [s for s in load_split("train") if s.category in cats]  # every training prompt
    params = list(policy.trainable_parameters())
    rng = np.random.default_rng(0)
    grads = []
    for b in range(n):
        picked = [specs[i] for i in rng.choice(len(specs), p, replace=False) for _ in range(g)]
        gen = torch.Generator().manual_seed(b)
        shape = policy.latent_shape
        if group_noise == "independent":
            init = torch.randn(p * g, *shape, generator=gen)
            noise = torch.randn(p * g, len(steps), *shape, generator=gen)
        else:  # one initial noise per prompt; trained-step noise independent or in ± pairs
            init = torch.randn(p, *shape, generator=gen).repeat_interleave(g, 0)
            if group_noise == "shared":
                noise = torch.randn(p * g, len(steps), *shape, generator=gen)
            else:
                z = torch.randn(p * g // 2, len(steps), *shape, generator=gen)
                noise = torch.stack([z, -z], 1).flatten(0, 1)
        with torch.no_grad():
            out, velocity = _rollout(policy, [s.text for s in picked], init, steps, eta, noise)
        sc = score_images(to_uint8(policy.decode(out.latents)), picked)
        scores = {"tifa": sc.tifa, "strict": sc.geneval, "object_size": sc.object_size}
        r = torch.from_numpy(scores[reward])
        adv = group_advantages(r.unsqueeze(1), torch.arange(p).repeat_interleave(g))
        loss = torch.zeros(())
        for k in range(len(steps)):
            new = recompute_step(
                velocity,
                out.x[:, k],
                out.x_next[:, k],
                out.sigma[k],
                out.sigma_next[k],
                sampler="flow_sde",
                eta=eta,
            )
            loss = loss - (adv * new.log_prob).mean()
        grad = torch.autograd.grad(loss, params)
        grads.append(torch.cat([x.flatten() for x in grad]).double())
    gs = torch.stack(grads)
    sq = (gs**2).sum(1).mean()
    signal = (n * (gs.mean(0) ** 2).sum() - sq) / (n - 1)
    trace = sq - signal
    scale = p * g * trace / signal if signal > 0 else float("inf")
    print(
        f"reward {reward:11s} {'+'.join(cats) if len(cats) < 6 else 'all categories'} eta {eta} "
        f"trained steps {steps} {group_noise} noise: |s|^2/trΣ per {p * g}-sample "
        f"estimate {float(signal / trace):+.3f}, gradient noise scale B ≈ {float(scale):,.0f} samples"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["attribution", "per-step", "noise-scale"])
    ap.add_argument(
        "--reward", nargs="+", default=["tifa"], choices=["tifa", "strict", "object_size"]
    )
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    ap.add_argument("--eta", type=float, nargs="+", default=[0.7])
    ap.add_argument("--steps", default="0,1,2", help="trained steps, comma-separated")
    ap.add_argument(
        "--group-noise",
        default="independent",
        choices=["independent", "shared", "antithetic"],
        help="noise within a group: all independent; one initial noise per prompt; and ± pairs",
    )
    ap.add_argument("--n", type=int, default=16, help="gradient estimates (noise-scale)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = ShapesPolicy.from_pretrained()
    steps = [int(s) for s in args.steps.split(",")]
    for eta in args.eta:
        if args.what == "attribution":
            attribution(policy, eta, steps)
        elif args.what == "per-step":
            per_step(policy, eta, tuple(args.categories))
        else:
            for reward in args.reward:
                noise_scale(
                    policy, reward, eta, steps, args.n, tuple(args.categories), args.group_noise
                )


if __name__ == "__main__":
    main()
