"""How much of the RL signal the rollout noise decides, and how noisy the policy gradient is.

Measurements on the shipped Shapes base model (or the checkpoint ``--checkpoint``), CFG 3,
T = 10, Flow-SDE (docs/experiments/gradient-noise.md):

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
al., 2018). An optimizer step on far fewer samples than B is mostly noise. From the same
rollouts, optionally: the gradient of the log-prob of block-averaged (low-frequency) coordinates
only (``--lowpass``: is the noise in the pixel dimensions the reward ignores?), LoRA on other
target modules (``--lora-targets``), and full fine-tuning with B per parameter group
(``--by-group``: where in the network the signal is shared across samples; with
``--text-encoder`` the text encoder, which the policy keeps frozen, trains too).

    .venv/bin/python benchmarks/shapes_gradient_noise.py attribution
    .venv/bin/python benchmarks/shapes_gradient_noise.py per-step --categories two_object color_attr position counting
    .venv/bin/python benchmarks/shapes_gradient_noise.py noise-scale --n 24 --reward tifa object_size
    .venv/bin/python benchmarks/shapes_gradient_noise.py noise-scale --n 24 --categories counting
    .venv/bin/python benchmarks/shapes_gradient_noise.py noise-scale --n 24 --threads 1 \
        --categories counting two_object color_attr --lowpass 8 4 2 --by-group \
        --lora-targets qkv,proj,ada qkv,proj,ada,pool_mlp.0,pool_mlp.2 ada,pool_mlp.0,pool_mlp.2
    .venv/bin/python benchmarks/shapes_gradient_noise.py noise-scale --n 24 --threads 1 \
        --categories position --checkpoint B2/model_ema.safetensors --lora-targets ada,pool_mlp.0,pool_mlp.2
    .venv/bin/python benchmarks/shapes_gradient_noise.py noise-scale --n 24 --threads 1 \
        --categories color_attr --steps 0 --by-group --text-encoder --checkpoint CKPT
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from flowdppo.core import group_advantages, recompute_step, sample
from flowdppo.models.shapes import ShapesPolicy
from flowdppo.shapes.evaluate import eval_specs
from flowdppo.shapes.model import tokenize
from flowdppo.shapes.prompts import CATEGORIES, load_split
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import score_images

CFG, T = 3.0, 10
HARD = ("two_object", "color_attr", "counting", "position")


def _velocity(policy, texts, text_grad: bool = False):
    """The CFG velocity field of ``policy`` for the prompts ``texts`` (one per sample);
    ``text_grad``: the prompts encoded with gradients (the policy caches them without), so that
    a trainable text encoder gets its share of the gradient."""
    if text_grad:
        cond = policy.model.encode_text(tokenize(texts, policy.model.cfg.max_tokens))
    else:
        cond = policy.encode_prompts(texts)
    return lambda x, s: policy.velocity(x, s, cond, CFG)


def _rollout(policy, texts, init, steps, eta, noise=None, generator=None):
    return sample(
        _velocity(policy, texts),
        init,
        policy.sigmas(T),
        sampler="flow_sde",
        eta=eta,
        train_steps=steps,
        noise=noise,
        generator=generator,
    )


def attribution(policy, eta: float, steps: list[int], n0: int = 12, m: int = 12) -> None:
    specs = eval_specs(4, split="train")
    for cat in HARD:
        shares = []
        for i, spec in enumerate(s for s in specs if s.category == cat):
            g = torch.Generator().manual_seed(i)
            init = torch.randn(n0, *policy.latent_shape, generator=g).repeat_interleave(m, 0)
            with torch.no_grad():
                out = _rollout(policy, [spec.text] * (n0 * m), init, steps, eta, generator=g)
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
        out = _rollout(policy, [s.text for s in specs], init, steps, eta, generator=g)
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


def _lowpass_log_prob(x_next, mean, std, block: int):
    """Per-dimension mean log-density (up to a constant) of the block-averaged coordinates of
    x_{k+1}: the orthonormal block coordinates ``block · avgpool_block(x)`` of white noise are
    white, so they are an exact Gaussian policy N(P μ, s² I) of their own."""
    d = torch.nn.functional.avg_pool2d(x_next - mean, block) * block
    return -(d**2).flatten(1).mean(1) / (2 * std**2)


def _param_group(name: str) -> str:
    """A parameter's group: its module path with the block index dropped (blocks.3.qkv → blocks.qkv)."""
    parts = [p for p in name.split(".")[:-1] if not p.isdigit()]
    return ".".join(parts) or name


def _report(label: str, gs: torch.Tensor, samples: int) -> str:
    n = gs.shape[0]
    sq = (gs**2).sum(1).mean()
    signal = (n * (gs.mean(0) ** 2).sum() - sq) / (n - 1)
    trace = sq - signal
    scale = f"{float(samples * trace / signal):,.0f}" if signal > 0 else "no measurable signal"
    return (
        f"{label}: {gs.shape[1]:,} parameters, |s|^2/trΣ {float(signal / trace):+.3f}, B ≈ {scale}"
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
    lowpass: tuple[int, ...] = (),
    lora_targets: tuple[str, ...] = (),
    by_group: bool = False,
    checkpoint: str | None = None,
    text_encoder: bool = False,
):
    """B of the default LoRA gradient and, from the same rollouts, of its variants: the
    log-prob of block-averaged coordinates only (``lowpass``), other LoRA target sets
    (``lora_targets``, comma-separated names each), and full fine-tuning per parameter group."""
    specs = [s for s in load_split("train") if s.category in cats]  # every training prompt
    # (label, policy, block size of the log-prob, B per parameter group too)
    variants: list[tuple[str, ShapesPolicy, int, bool]] = [
        ("LoRA (default targets)", policy, 1, False)
    ]
    variants += [(f"LoRA, log-prob of {b}x{b} block means", policy, b, False) for b in lowpass]
    for t in lora_targets:
        torch.manual_seed(0)
        other = ShapesPolicy.from_pretrained(checkpoint, lora_target_modules=t.split(","))
        variants.append((f"LoRA on {t}", other, 1, False))
    if by_group:
        full = ShapesPolicy.from_pretrained(checkpoint, full_finetune=True)
        full.model.text.requires_grad_(text_encoder)  # the policy keeps it frozen
        variants.append(("full fine-tuning", full, 1, True))
    rng = np.random.default_rng(0)
    grads: dict[str, list[torch.Tensor]] = {}
    for b in range(n):
        picked = [specs[i] for i in rng.choice(len(specs), p, replace=False) for _ in range(g)]
        texts = [s.text for s in picked]
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
            out = _rollout(policy, texts, init, steps, eta, noise)
        sc = score_images(to_uint8(policy.decode(out.latents)), picked)
        scores = {"tifa": sc.tifa, "strict": sc.geneval, "object_size": sc.object_size}
        r = torch.from_numpy(scores[reward])
        adv = group_advantages(r.unsqueeze(1), torch.arange(p).repeat_interleave(g))
        for label, pol, block, per_group in variants:
            velocity = _velocity(pol, texts, text_grad=per_group and text_encoder)
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
                lp = (
                    new.log_prob
                    if block == 1
                    else _lowpass_log_prob(out.x_next[:, k], new.mean, new.std, block)
                )
                loss = loss - (adv * lp).mean()
            named = [(k, v) for k, v in pol.model.named_parameters() if v.requires_grad]
            grad = torch.autograd.grad(loss, [v for _, v in named])
            grads.setdefault(label, []).append(torch.cat([x.flatten() for x in grad]).double())
            if per_group:
                per: dict[str, list[torch.Tensor]] = {}
                for (k, _), x in zip(named, grad, strict=True):
                    per.setdefault(_param_group(k), []).append(x.flatten())
                for k, xs in per.items():
                    grads.setdefault(f"  {label}, {k}", []).append(torch.cat(xs).double())
    print(
        f"reward {reward} {'+'.join(cats) if len(cats) < 6 else 'all categories'} eta {eta} "
        f"trained steps {steps} {group_noise} noise, {p * g}-sample estimates:"
    )
    for label, gl in grads.items():
        print("  " + _report(label, torch.stack(gl), p * g))


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
    ap.add_argument(
        "--lowpass",
        type=int,
        nargs="*",
        default=[],
        help="noise-scale: also the log-prob of these block sizes' block means (e.g. 8 4 2)",
    )
    ap.add_argument(
        "--lora-targets",
        nargs="*",
        default=[],
        help="noise-scale: also LoRA on these comma-separated target sets (e.g. qkv,proj,ada)",
    )
    ap.add_argument(
        "--by-group",
        action="store_true",
        help="noise-scale: also full fine-tuning, with B per parameter group",
    )
    ap.add_argument(
        "--text-encoder",
        action="store_true",
        help="noise-scale --by-group: the text encoder trains too (prompts encoded with gradients)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", help="a Shapes checkpoint (default: the shipped base)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = ShapesPolicy.from_pretrained(args.checkpoint)
    steps = [int(s) for s in args.steps.split(",")]
    for eta in args.eta:
        if args.what == "attribution":
            attribution(policy, eta, steps)
        elif args.what == "per-step":
            per_step(policy, eta, tuple(args.categories))
        else:
            for reward in args.reward:
                noise_scale(
                    policy,
                    reward,
                    eta,
                    steps,
                    args.n,
                    tuple(args.categories),
                    args.group_noise,
                    lowpass=tuple(args.lowpass),
                    lora_targets=tuple(args.lora_targets),
                    by_group=args.by_group,
                    checkpoint=args.checkpoint,
                    text_encoder=args.text_encoder,
                )


if __name__ == "__main__":
    main()
