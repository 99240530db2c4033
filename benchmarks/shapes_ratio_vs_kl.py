"""The paper's argument made visible: the ratio ρ - 1 against the exact per-step KL, per step.

docs/algorithm.md §7: the ratio ρ = π_θ/π_old of one stored action is a one-sample estimate of the
divergence between the two step policies; its mean sits below 1 and it is noisy. With both step
policies Gaussian with the same std s (§2, §3), per latent dimension (D of them, the ``mean``
reduction):

    log ρ = z·Δμ / (s·D) - KL,   KL = |Δμ|² / (2 s² D),   z = (x_{k+1} - μ_old) / s,

so for a Δμ that does not depend on z, log ρ has mean -KL and standard deviation
|Δμ| / (s·D) = sqrt(2·KL / D), which at the KL of an RL update (≈ 1e-7 per dimension) is ≈ 100
times the KL itself: the ratio's deviation from 1 says almost nothing about how far a step's
policy moved. (The update does make Δμ depend on z: it raises the log-prob of the actions with
A > 0, which is the signal part of log ρ.)

What this script does: the default recipe of ``flowdppo train`` on the shipped base, but with
every step of ``--pool`` trained, so that each step index has its pairs; ``--iters`` rollouts,
each followed by ``--updates`` optimizer updates on all of its pairs (multi-epoch: every update
against the same old policy). After each update, for every (sample, step) pair: the exact KL,
log ρ and the advantage. Reported per update and step index: the mean KL, the mean and standard
deviation of ρ - 1, the one-sample prediction sqrt(2·KL/D) of that deviation, and which pairs a
trust region would act on: the ratio clip (ε = 1e-4; §4) and the Flow-DPPO mask (δ = 1e-5).
``--figure`` draws |ρ - 1| against the KL of every pair, by step. A run is deterministic for a
given ``--threads``; another thread count rounds the rollouts differently, which flips a few
discrete rewards and moves the numbers by about 10%.

    .venv/bin/python benchmarks/shapes_ratio_vs_kl.py [--iters 3] [--updates 4] [--pool 0 5]
        [--threads 2] [--figure docs/img/ratio_vs_kl.png]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from flowdppo.config import load_config
from flowdppo.core import dppo_drop, gaussian_kl, recompute_step
from flowdppo.trainer.trainer import Trainer

EPS_CLIP, DELTA = 1e-4, 1e-5


@torch.no_grad()
def pair_stats(trainer: Trainer, exp) -> dict[str, np.ndarray]:
    """Exact per-dimension KL(π_old ‖ π_θ), log ρ, advantage and step index of every pair."""
    cfg, policy = trainer.cfg, trainer.policy
    cond = policy.encode_prompts(exp.prompts)
    n, k = exp.std.shape
    out: dict[str, list[np.ndarray]] = {"kl": [], "log_rho": [], "adv": [], "step": []}
    for j in range(k):
        new = recompute_step(
            lambda x, s: policy.velocity(x, s, cond, cfg.sampling.guidance_scale),
            exp.x[:, j],
            exp.x_next[:, j],
            exp.sigma[j],
            exp.sigma_next[j],
            sampler=cfg.sampling.sampler,
            eta=cfg.sampling.eta,
            reduction="mean",
        )
        kl = gaussian_kl(new.mean, exp.mean[:, j], exp.std[:, j], "mean")
        out["kl"].append(kl.double().numpy())
        out["log_rho"].append((new.log_prob.double() - exp.log_prob[:, j].double()).numpy())
        out["adv"].append(exp.advantages.double().numpy())
        out["step"].append(np.full(n, int(exp.step_index[j])))
    return {key: np.concatenate(v) for key, v in out.items()}


def clip_acts(log_rho: np.ndarray, adv: np.ndarray, eps: float = EPS_CLIP) -> np.ndarray:
    """The pairs whose gradient the ratio clip (core.ratio_clip_loss) zeroes: ρ left
    [1 - ε, 1 + ε] in the advantage's direction."""
    rho1 = np.expm1(log_rho)
    return ((adv > 0) & (rho1 > eps)) | ((adv < 0) & (rho1 < -eps))


def summarise(s: dict[str, np.ndarray], d: int) -> dict[str, float]:
    rho1 = np.expm1(s["log_rho"])
    clip = clip_acts(s["log_rho"], s["adv"])
    mask = dppo_drop(*(torch.from_numpy(s[k]) for k in ("kl", "log_rho", "adv")), DELTA).numpy()
    return {
        "kl": float(s["kl"].mean()),
        "rho1_mean": float(rho1.mean()),
        "rho1_std": float(rho1.std()),
        "predicted_std": float(np.sqrt(2 * s["kl"] / d).mean()),
        "below_one": float((rho1 < 0).mean()),
        "corr": float(np.corrcoef(np.abs(rho1), s["kl"])[0, 1]) if s["kl"].std() > 0 else 0.0,
        "clip_frac": float(clip.mean()),
        "mask_frac": float(mask.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=3, help="rollouts (iterations)")
    ap.add_argument("--updates", type=int, default=4, help="updates per rollout, all its pairs")
    ap.add_argument(
        "--pool", type=int, nargs=2, default=[0, 5], metavar=("FIRST", "END"), help="steps"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", type=Path, default=None, help="PNG of |ρ - 1| against the KL")
    a = ap.parse_args()
    if not 0 <= a.pool[0] < a.pool[1] <= 10:
        ap.error(f"--pool: expected 0 <= FIRST < END <= 10 (T = 10), got {a.pool}")
    cfg = load_config(
        None,
        [
            f"sampling.train_pool=[{a.pool[0] / 10},{a.pool[1] / 10}]",
            f"sampling.train_steps={a.pool[1] - a.pool[0]}",
            "optim.updates_per_iter=1",
            "eval.every=0",
            f"train.threads={a.threads}",
        ],
    )
    rows: list[tuple[int, int, dict[str, float]]] = []
    points: list[dict[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        d = math.prod(trainer.policy.latent_shape)
        per: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}
        for it in range(a.iters):
            exp = trainer.rollout(it)
            trainer.advantages(exp)
            for u in range(1, a.updates + 1):
                trainer.update(exp, it)
                s = pair_stats(trainer, exp)
                for step in np.unique(s["step"]):
                    sel = s["step"] == step
                    per.setdefault((u, int(step)), []).append({k: v[sel] for k, v in s.items()})
                if u == a.updates:
                    points.append(s)
            print(f"iteration {it + 1}/{a.iters} done", flush=True)
        trainer.logger.close()
        trainer.pool.shutdown(wait=True)
        for (u, step), parts in sorted(per.items()):
            merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            rows.append((u, step, summarise(merged, d)))
    print(
        f"\nShapes base, default recipe with steps {a.pool[0]}..{a.pool[1] - 1} trained, "
        f"{a.iters} rollouts of {trainer.num_samples} samples, D = {d}; per-dimension units\n"
    )
    print(
        "| update | step | KL (exact) | mean ρ-1 | std ρ-1 | sqrt(2 KL/D) | ρ < 1 | corr(|ρ-1|, KL) "
        f"| clip ε={EPS_CLIP:g} acts | DPPO δ={DELTA:g} acts |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for u, step, r in rows:
        print(
            f"| {u} | {step} | {r['kl']:.2e} | {r['rho1_mean']:+.2e} | {r['rho1_std']:.2e} | "
            f"{r['predicted_std']:.2e} | {r['below_one']:.0%} | {r['corr']:+.2f} | "
            f"{r['clip_frac']:.1%} | {r['mask_frac']:.1%} |"
        )
    if a.figure is not None:
        figure(
            points,
            a.figure,
            d,
            f"every pair after update {a.updates} of each of {a.iters} rollouts",
        )
        print(f"\nfigure: {a.figure}")


def figure(points: list[dict[str, np.ndarray]], path: Path, d: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = {k: np.concatenate([p[k] for p in points]) for k in points[0]}
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for step in np.unique(s["step"]):
        sel = s["step"] == step
        ax.scatter(s["kl"][sel], np.abs(np.expm1(s["log_rho"][sel])), s=4, label=f"step {step}")
    lo, hi = s["kl"].min(), s["kl"].max()
    x = np.geomspace(lo, hi, 50)
    ax.plot(x, np.sqrt(2 * x / d), "k--", lw=1, label="sqrt(2 KL / D): one-sample noise")
    ax.plot(x, x, "k:", lw=1, label="|ρ - 1| = KL")
    ax.axhline(EPS_CLIP, color="tab:red", lw=1, label=f"clip ε = {EPS_CLIP:g}")
    ax.axvline(DELTA, color="tab:purple", lw=1, label=f"DPPO δ = {DELTA:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("exact KL(π_old ‖ π_θ) per dimension")
    ax.set_ylabel("|ρ - 1|")
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
