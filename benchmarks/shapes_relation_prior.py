"""Does a Shapes checkpoint read the relation word at all? Its layout prior against the world's.

At σ = 1 the input holds no image, so the flow model's denoised estimate x̂₀ = x − v(x, 1, prompt)
is its estimate of E[x₀ | prompt]: where it expects each object before any noise has broken the
symmetry. For "A to the left of B" the world's own E[x₀] puts A's colour to the left of B's (the
cells are uniform given the relation, so the mean column of A's cell is 0.67 against B's 2.33).
A model that ignores the relation word predicts the same layout for "A left of B" and "A right
of B".

Both mean images are decomposed per pixel into background + a_A·(colour_A − bg) + a_B·(colour_B −
bg) by least squares (exact for the renderer's means, whose pixels are mixtures of the three
colours), and the centroids of a_A and a_B are taken along the relation's axis. The score of a
prompt is the signed separation centroid_B − centroid_A in the relation's direction (pixels;
positive = A on the side the relation names); the summary is the model's mean separation over the
renderer's (0: the relation word has no effect on the prior; 1: the world's prior).

    .venv/bin/python benchmarks/shapes_relation_prior.py [--checkpoint PATH] [--prompts 40]

PATH as in ``shapes_base_skills.py`` (a .safetensors or a pretraining ``pretrain_state.pt``).
Test position prompts whose two colours differ; about 20 s on one thread.

``--fit-steps N`` first trains the checkpoint (all weights, Adam ``--fit-lr``) on pretraining's
σ = 1 prior term alone (``flowdppo.shapes.pretrain.prior_loss``): 32 training position prompts
per step, each with the mean of ``--fit-scenes`` renders (16) as its target (the least noisy
form of the layout prior's loss), and reports the separation on ``--split``
``--fit-reports`` times (5): whether the model *can* learn the relation's prior when nothing else
competes for it.

``--figure PATH`` draws, for the first ``--figure-prompts`` prompts, the world's and the model's
mean image at σ = 1 for the prompt and for its mirror (the opposite relation).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from shapes_base_skills import load_policy

from flowdppo.shapes.model import tokenize
from flowdppo.shapes.pretrain import PretrainConfig, make_prior_batch, prior_loss
from flowdppo.shapes.prompts import (
    OPPOSITE,
    PromptSpec,
    load_split,
    sample_scenes,
    split_by_category,
)
from flowdppo.shapes.render import render
from flowdppo.shapes.world import BACKGROUND, PALETTE

# direction of "A <relation> B" as (axis of the image array [C, H, W] → 1 rows / 2 columns, sign):
# "A left of B" is correct when B's column exceeds A's.
AXIS = {
    "to the left of": (2, 1.0),
    "to the right of": (2, -1.0),
    "above": (1, 1.0),
    "below": (1, -1.0),
}


def colour_weights(mean_image: np.ndarray, ca: int, cb: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weights (a_A, a_B) [H, W] of mean_image [3, H, W] (in [0, 1]) on the two colours."""
    bg = BACKGROUND.astype(np.float64) / 255
    basis = np.stack([PALETTE[ca] / 255 - bg, PALETTE[cb] / 255 - bg], axis=1)  # [3, 2]
    resid = mean_image.reshape(3, -1) - bg[:, None]  # [3, H*W]
    coef, *_ = np.linalg.lstsq(basis, resid, rcond=None)  # [2, H*W]
    h, w = mean_image.shape[1:]
    return coef[0].reshape(h, w), coef[1].reshape(h, w)


def separation(mean_image: np.ndarray, spec: PromptSpec) -> float:
    """Signed separation (pixels) of the two objects' colour centroids in the relation's direction."""
    (ga, gb), rel = spec.groups, spec.relation
    assert rel is not None
    axis, sign = AXIS[rel]
    a, b = (np.clip(x, 0, None) for x in colour_weights(mean_image, ga.color, gb.color))
    coord = np.arange(mean_image.shape[axis], dtype=np.float64)
    pa, pb = a.sum(axis=2 - axis), b.sum(axis=2 - axis)  # profiles along the axis
    cen_a = float((pa * coord).sum() / max(pa.sum(), 1e-9))
    cen_b = float((pb * coord).sum() / max(pb.sum(), 1e-9))
    return sign * (cen_b - cen_a)


def world_mean(spec: PromptSpec, n: int, seed: int) -> np.ndarray:
    """E[x₀ | prompt] of the renderer, from n scenes: [3, 32, 32] in [0, 1]."""
    rng = np.random.default_rng(seed)
    return render(sample_scenes([spec] * n, rng)).mean(0).double().numpy()


@torch.no_grad()
def model_mean(policy, spec: PromptSpec, n: int, seed: int, guidance: float) -> np.ndarray:
    """The model's x̂₀ at σ = 1, averaged over n noises, in [0, 1]: [3, 32, 32]."""
    x = torch.randn(n, *policy.latent_shape, generator=torch.Generator().manual_seed(seed))
    sigma = torch.ones(n)
    if guidance == 1.0:  # the network itself: no cached prompt encodings (``--fit-steps``)
        net = policy.model
        cond = net.encode_text(tokenize([spec.text] * n, net.cfg.max_tokens))
        v = net(x, sigma, cond["text"], cond["mask"])
    else:
        v = policy.velocity(x, sigma, policy.encode_prompts([spec.text] * n), guidance)
    return policy.decode(x - v).mean(0).double().cpu().numpy()


def save_figure(policy, specs: list[PromptSpec], n: int, path: str, samples: int) -> None:
    """Rows of [world, model] mean images at σ = 1 for a prompt and for the same prompt with the
    opposite relation: a model that reads the relation moves the colours; one that does not
    draws the same two pictures."""
    from flowdppo.viz import save_grid

    images, captions = [], []
    for i, spec in enumerate(specs[:n]):
        rel = spec.relation
        assert rel is not None
        mirror = PromptSpec(spec.category, spec.groups, OPPOSITE[rel])
        for s in (spec, mirror):
            images += [world_mean(s, samples, i), model_mean(policy, s, samples, i, 1.0)]
            captions += [f"world: {s.text}", f"model: {s.text}"]
    grid = torch.from_numpy(np.stack(images)).float()
    print(f"figure: {save_grid(grid, captions, path, cols=4, cell=96)}")


def fit_prior(
    policy, steps: int, lr: float, report, scenes: int = 16, reports: int = 5, seed: int = 0
) -> None:
    """Train ``policy.model`` on pretraining's σ = 1 prior term alone, position prompts only."""
    model = policy.model.requires_grad_(True)  # every weight, the text encoder's included
    cfg = PretrainConfig(
        seed=seed, prior_batch=32, prior_scenes=scenes, prior_categories=["position"]
    )
    by_cat = split_by_category("train")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(1, steps + 1):
        loss = prior_loss(model, *make_prior_batch(step, cfg, by_cat))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, steps // reports) == 0:
            model.eval()
            report(f"fit step {step}: loss {loss.item():.5f}")
            model.train()
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--prompts", type=int, default=40, help="test position prompts used")
    ap.add_argument("--samples", type=int, default=256, help="noises / scenes per prompt")
    ap.add_argument("--guidance", type=float, default=1.0, help="CFG of the model's estimate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--fit-steps", type=int, default=0, help="train on the σ = 1 term first")
    ap.add_argument("--fit-lr", type=float, default=1e-3)
    ap.add_argument("--figure", default=None, help="PNG of world vs model priors (at the end)")
    ap.add_argument("--figure-prompts", type=int, default=3, help="prompts in the figure")
    ap.add_argument("--fit-scenes", type=int, default=16, help="renders per prior target")
    ap.add_argument("--fit-reports", type=int, default=5, help="reports during the fit")
    a = ap.parse_args()
    if a.fit_steps and a.guidance != 1.0:
        ap.error("--fit-steps measures the network at CFG 1; drop --guidance")
    torch.set_num_threads(a.threads)
    policy = load_policy(a.checkpoint)
    specs = [
        s
        for s in load_split(a.split)
        if s.category == "position" and s.groups[0].color != s.groups[1].color
    ][: a.prompts]
    world = np.array([separation(world_mean(s, a.samples, i), s) for i, s in enumerate(specs)])
    print(f"{len(specs)} {a.split} position prompts, {a.samples} samples each, CFG {a.guidance}")
    print(f"world: mean separation {world.mean():+.2f} px (min {world.min():+.2f})")

    def report(prefix: str) -> None:
        m = np.array(
            [
                separation(model_mean(policy, s, a.samples, i, a.guidance), s)
                for i, s in enumerate(specs)
            ]
        )
        print(
            f"{prefix}model: mean separation {m.mean():+.2f} px, right direction in "
            f"{np.mean(m > 0):.0%}; model / world {m.mean() / world.mean():.3f} "
            "(0: ignores the relation word; 1: the world's prior)",
            flush=True,
        )

    report("")
    if a.fit_steps:
        fit_prior(
            policy,
            a.fit_steps,
            a.fit_lr,
            lambda p: report(p + ", "),
            scenes=a.fit_scenes,
            reports=a.fit_reports,
        )
    if a.figure:
        save_figure(policy, specs, a.figure_prompts, a.figure, a.samples)


if __name__ == "__main__":
    main()
