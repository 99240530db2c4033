"""The ratio against the exact divergence, from a run's sampled terms (the paper's argument).

``train.diagnostic_terms`` writes, each iteration, a bounded sample of (sample, step) terms to
``RUN/diagnostics/ratio_kl.jsonl``: the update index, the step index, log ρ, the exact
KL(π_old ‖ π_θ) of the step and the advantage. From them, for a ratio clip ε and a mask δ:

- the ratio clip blocks a term (zero gradient) when ``A > 0 and ρ > 1 + ε`` or
  ``A < 0 and ρ < 1 − ε``;
- the Flow-DPPO mask blocks it when ``KL ≥ δ`` and ``(ρ > 1 and A > 0) or (ρ < 1 and A < 0)``;

and per step index: the terms, the correlation of |ρ − 1| with sqrt(KL) (the divergence's
natural scale: for a mean shift, |log ρ| has standard deviation sqrt(2·KL/D)), and the fraction
of terms each rule blocks that the other lets through. ``flowdppo plot --diagnostic ratio``
draws |ρ − 1| against KL, coloured by step index.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

FILE = Path("diagnostics") / "ratio_kl.jsonl"


def read_terms(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every sampled term of a run, with its iteration; a redone iteration's last block wins."""
    path = Path(run_dir) / FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: the run logged no terms (train.diagnostic_terms = 0, or a "
            "run made before the setting existed)"
        )
    blocks: dict[int, list[dict[str, Any]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if not isinstance(row, dict) or "terms" not in row:
            raise ValueError(f"{path}:{n}: expected {{'iter': ..., 'terms': [...]}}")
        blocks[int(row["iter"])] = row["terms"]
    return [{**t, "iter": it} for it in sorted(blocks) for t in blocks[it]]


def blocked(terms: list[dict[str, Any]], delta: float, clip_range: float) -> dict[str, np.ndarray]:
    """Boolean arrays: which terms the clip and the mask block, with ρ, KL, A and step."""
    rho = np.exp(np.array([t["log_rho"] for t in terms], dtype=float))
    kl = np.array([t["kl"] for t in terms], dtype=float)
    adv = np.array([t["adv"] for t in terms], dtype=float)
    clip = ((adv > 0) & (rho > 1 + clip_range)) | ((adv < 0) & (rho < 1 - clip_range))
    mask = (kl >= delta) & (((rho > 1) & (adv > 0)) | ((rho < 1) & (adv < 0)))
    step = np.array([t["step"] for t in terms], dtype=int)
    return {"rho": rho, "kl": kl, "adv": adv, "step": step, "clip": clip, "mask": mask}


def by_step(terms: list[dict[str, Any]], delta: float, clip_range: float) -> list[dict[str, Any]]:
    """Per step index (and "all"): terms, corr(|ρ−1|, sqrt KL), clip-only and mask-only rates."""
    b = blocked(terms, delta, clip_range)
    rows = []
    for s in [*sorted(set(b["step"].tolist())), None]:
        sel = np.ones_like(b["step"], dtype=bool) if s is None else b["step"] == s
        dev, root = np.abs(b["rho"][sel] - 1), np.sqrt(b["kl"][sel])
        corr = (
            float(np.corrcoef(dev, root)[0, 1])
            if sel.sum() > 2 and dev.std() > 0 and root.std() > 0
            else math.nan
        )
        rows.append(
            {
                "step": "all" if s is None else s,
                "terms": int(sel.sum()),
                "kl_mean": float(b["kl"][sel].mean()) if sel.any() else math.nan,
                "abs_rho_minus_1_mean": float(dev.mean()) if sel.any() else math.nan,
                "corr": corr,
                "clip_frac": float(b["clip"][sel].mean()) if sel.any() else math.nan,
                "mask_frac": float(b["mask"][sel].mean()) if sel.any() else math.nan,
                "clip_only_frac": float((b["clip"] & ~b["mask"])[sel].mean())
                if sel.any()
                else math.nan,
                "mask_only_frac": float((b["mask"] & ~b["clip"])[sel].mean())
                if sel.any()
                else math.nan,
            }
        )
    return rows


def ratio_table(name: str, terms: list[dict[str, Any]], delta: float, clip_range: float) -> str:
    """``by_step`` of one group's terms as a markdown table under a ``name (δ, ε):`` line."""
    lines = [
        f"{name} (δ = {delta:g}, ε = {clip_range:g}):",
        "| step | terms | mean KL | mean abs(ρ−1) | corr | clip | mask | clip only | mask only |",
    ]
    for r in by_step(terms, delta, clip_range):
        lines.append(
            f"| {r['step']} | {r['terms']} | {r['kl_mean']:.2e} | "
            f"{r['abs_rho_minus_1_mean']:.2e} | {r['corr']:.2f} | {r['clip_frac']:.3f} | "
            f"{r['mask_frac']:.3f} | {r['clip_only_frac']:.3f} | {r['mask_only_frac']:.3f} |"
        )
    return "\n".join(lines)


def plot_ratio(
    groups: dict[str, list[dict[str, Any]]], out: str | Path, delta: float, clip_range: float
) -> Path:
    """One panel per group (a run, or a method's runs): |ρ − 1| against KL, by step index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 5), squeeze=False)
    for ax, (name, terms) in zip(axes[0], groups.items(), strict=True):
        b = blocked(terms, delta, clip_range)
        keep = b["kl"] > 0  # the first update's terms are on-policy: KL = 0, ρ = 1
        sc = ax.scatter(
            b["kl"][keep],
            np.abs(b["rho"][keep] - 1) + 1e-12,
            c=b["step"][keep],
            cmap="viridis",
            s=6,
            alpha=0.6,
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(delta, color="red", lw=0.8, label=f"mask δ = {delta:g}")
        ax.axhline(clip_range, color="black", lw=0.8, ls="--", label=f"clip ε = {clip_range:g}")
        stats = by_step(terms, delta, clip_range)[-1]
        ax.set_title(
            f"{name}: {stats['terms']} terms; clip-only {100 * stats['clip_only_frac']:.1f}%, "
            f"mask-only {100 * stats['mask_only_frac']:.1f}%",
            fontsize=9,
        )
        ax.set_xlabel("exact KL(π_old ‖ π_θ) of the step")
        ax.set_ylabel("|ρ − 1|")
        ax.legend(fontsize=7, loc="lower right")
        fig.colorbar(sc, ax=ax, label="step index")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def ratio_report(
    runs: list[str], out: str | Path, delta: float | None, clip_range: float | None
) -> str:
    """``flowdppo plot --diagnostic ratio``: the scatter of every run's sampled terms written to
    ``out``, then one table per run; δ and ε default to the first run's (ε: else the ratio
    clip's default)."""
    from flowdppo.cli_errors import UserError
    from flowdppo.core import DEFAULT_CLIP_RANGE
    from flowdppo.runs import run_config

    cfg = run_config(runs[0])
    d = delta if delta is not None else cfg.loss.delta
    eps = clip_range or cfg.loss.clip_range or DEFAULT_CLIP_RANGE["ratio_clip"]
    for name, value in (("--delta", d), ("--clip-range", eps)):
        if not value > 0:
            raise UserError(f"flowdppo plot: {name} must be > 0, got {value}")
    groups = {Path(r).name: read_terms(r) for r in runs}
    lines = [str(plot_ratio(groups, Path(out), d, eps))]
    lines += [ratio_table(name, terms, d, eps) for name, terms in groups.items()]
    return "\n".join(lines)
