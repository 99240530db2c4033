"""GenEval-style evaluation of a policy on the Shapes test prompts (docs/shapes.md, "Rewards").

``n`` samples per category cycle through that category's test prompts in a fixed order; sample
``j`` starts from noise seeded by ``(seed, j)``, so every evaluation of every model sees the
same prompts and the same noise. The sampler is the ODE (Euler) with ``steps`` steps
(``flowdppo.trainer.sampling.generate``).
Reported: strict accuracy (``shapes_geneval``) per category with a 95% Wilson interval, overall
accuracy (the mean over categories, as GenEval reports), mean TIFA score, the world's Fréchet
distance to fresh renders of the same prompts, and the within-prompt feature diversity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowdppo.shapes.prompts import CATEGORIES, PromptSpec, load_split, sample_scenes
from flowdppo.shapes.render import render, to_uint8
from flowdppo.shapes.score import score_images


def eval_specs(
    n_per_category: int, split: str = "test", categories: tuple[str, ...] = CATEGORIES
) -> list[PromptSpec]:
    """``n_per_category`` prompts per category, cycling through the split's prompts in order."""
    if n_per_category < 1:
        raise ValueError(f"n_per_category must be >= 1, got {n_per_category}")
    specs = load_split(split)
    out: list[PromptSpec] = []
    for cat in categories:
        pool = [s for s in specs if s.category == cat]
        out += [pool[i % len(pool)] for i in range(n_per_category)]
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


@dataclass
class EvalResult:
    """Per-category and overall metrics, plus the per-sample pass flags (for the grid)."""

    metrics: dict[str, float]
    table: list[dict[str, Any]]
    passed: np.ndarray


def score_eval(
    images: torch.Tensor, specs: list[PromptSpec], *, fd_seed: int = 0, with_features: bool = True
) -> EvalResult:
    """Score generated images of ``specs``: accuracy table, TIFA, FD, diversity."""
    s = score_images(to_uint8(images), specs)
    cats = np.array([sp.category for sp in specs])
    table, metrics = [], {}
    for cat in CATEGORIES:
        m = cats == cat
        if not m.any():
            continue
        k, n = int(s.geneval[m].sum()), int(m.sum())
        lo, hi = wilson(k, n)
        table.append(
            {
                "category": cat,
                "n": n,
                "strict": k / n,
                "ci_low": lo,
                "ci_high": hi,
                "tifa": float(s.tifa[m].mean()),
            }
        )
        metrics[f"eval/strict_{cat}"] = k / n
    metrics["eval/strict_overall"] = float(np.mean([r["strict"] for r in table]))
    metrics["eval/tifa_mean"] = float(s.tifa.mean())
    metrics["eval/clean_frac"] = float(s.clean.mean())
    if with_features:
        from flowdppo.shapes.features import extract_features
        from flowdppo.shapes.metrics import frechet_distance, group_diversity

        ref = render(sample_scenes(specs, np.random.default_rng(fd_seed)))
        feats = extract_features(images)
        metrics["eval/fd"] = frechet_distance(feats, extract_features(ref))
        texts = [sp.text for sp in specs]
        ids = np.array([texts.index(t) for t in texts])
        keep = np.isin(ids, [i for i in set(ids.tolist()) if (ids == i).sum() >= 2])
        if keep.any():
            metrics["eval/diversity"] = group_diversity(feats[torch.from_numpy(keep)], ids[keep])
    return EvalResult(metrics, table, s.geneval.astype(bool))


def markdown_table(result: EvalResult, title: str = "") -> str:
    """The GenEval-style table as markdown."""
    lines = [
        f"### {title}" if title else "",
        "",
        "| category | n | strict | 95% CI | TIFA |",
        "|---|---|---|---|---|",
    ]
    for r in result.table:
        lines.append(
            f"| {r['category']} | {r['n']} | {100 * r['strict']:.1f}% | [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] | {r['tifa']:.3f} |"
        )
    m = result.metrics
    lines.append(
        f"| **overall** | {sum(r['n'] for r in result.table)} | **{100 * m['eval/strict_overall']:.1f}%** | | {m['eval/tifa_mean']:.3f} |"
    )
    extra = [
        f"FD {m['eval/fd']:.2f}" if "eval/fd" in m else "",
        f"diversity {m['eval/diversity']:.3f}" if "eval/diversity" in m else "",
    ]
    lines += ["", ", ".join(e for e in extra if e)]
    return "\n".join(lines).strip() + "\n"
