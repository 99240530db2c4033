"""The report's pictures: the reward-vs-KL frontier, curves over iterations, what the trust
region blocked, and (multi-objective specs) the trade-off between the rewards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowdppo.compare.report import RunData, binding
from flowdppo.compare.spec import Spec


def _colours(spec: Spec) -> dict[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: matplotlib.colors.to_hex(cmap(i % 10)) for i, m in enumerate(spec.methods)}


def _cell_styles(spec: Spec) -> dict[str, str]:
    """A line style per cell within its method (the trust-region sizes), in spec order."""
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
    out, seen = {}, {}
    for cell in spec.cells:
        m = next(r.method for r in spec.runs if r.cell == cell)
        out[cell] = styles[seen.get(m, 0) % len(styles)]
        seen[m] = seen.get(m, 0) + 1
    return out


def _mean_series(ds: list[RunData], key) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at the iterations every seed has."""
    series = [d.series(key) for d in ds]
    common = set(series[0][0].tolist())
    for it, _ in series[1:]:
        common &= set(it.tolist())
    its = np.array(sorted(common))
    vals = np.array([[v[list(i).index(t)] for t in its] for i, v in series])
    return its, vals.mean(0) if vals.size else vals


def write_plots(spec: Spec, cells: dict[str, list[RunData]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep, col, sty = spec.report, _colours(spec), _cell_styles(spec)
    paths = []

    # 1. The frontier: every run's trajectory (thin), the cell's mean over seeds (thick).
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for cell, ds in cells.items():
        m = ds[0].run.method
        for d in ds:
            x, y = d.series(rep.kl)[1], d.series(rep.reward)[1]
            if x.size == y.size:
                ax.plot(x, y, color=col[m], alpha=0.25, lw=0.8, linestyle=sty[cell])
        _, mx = _mean_series(ds, rep.kl)
        _, my = _mean_series(ds, rep.reward)
        if mx.size == my.size and mx.size:
            ax.plot(mx, my, color=col[m], lw=2, linestyle=sty[cell], marker="o", ms=3, label=cell)
    for b in rep.kl_budgets:
        ax.axvline(b, color="grey", lw=0.6, alpha=0.5)
    ax.set_xlabel(f"{rep.kl} (exact KL to the base model)")
    ax.set_ylabel(rep.reward + " (held-out)")
    ax.set_title(f"{spec.name}: reward vs KL to the base (thin: each seed; thick: mean)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out / "frontier.png")
    fig.savefig(paths[-1], dpi=130)
    plt.close(fig)

    # 2. Curves over iterations: reward, KL to base, and the blocked fraction per iteration.
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    for cell, ds in cells.items():
        m = ds[0].run.method
        for ax, key in zip(axes[:2], (rep.reward, rep.kl), strict=True):
            it, v = _mean_series(ds, key)
            ax.plot(it, v, color=col[m], linestyle=sty[cell], label=cell)
        bk = binding(ds[0])["blocked_metric"]
        n = min(len(d.trains) for d in ds)
        if n:
            fr = np.mean([[t.get(bk) or 0.0 for t in d.trains[:n]] for d in ds], axis=0)
            axes[2].plot(np.arange(1, n + 1), fr, color=col[m], linestyle=sty[cell], label=cell)
    for ax, title in zip(
        axes,
        (rep.reward, rep.kl, "fraction of terms masked / clipped (mean over seeds)"),
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel("iteration")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 3. Multi-objective: each reward's gain over the base, per run and cell mean.
    if len(rep.objectives) >= 2:
        a, b = rep.objectives[:2]
        fig, ax = plt.subplots(figsize=(6.5, 5))
        for cell, ds in cells.items():
            m = ds[0].run.method
            _, xa = _mean_series(ds, a)
            _, xb = _mean_series(ds, b)
            if xa.size and xa.size == xb.size:
                ax.plot(
                    xa - xa[0],
                    xb - xb[0],
                    color=col[m],
                    linestyle=sty[cell],
                    marker="o",
                    ms=3,
                    label=cell,
                )
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel(f"gain in {a}")
        ax.set_ylabel(f"gain in {b}")
        ax.set_title("trade-off over training (mean over seeds)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "tradeoff.png")
        fig.savefig(paths[-1], dpi=130)
        plt.close(fig)

    # 4. Levels: each measure against the x of the levels (e.g. held-out accuracy, FD and
    # diversity against the trained categories' accuracy), cell means over seeds, with the gains.
    if rep.levels:
        lx, ly = rep.levels["x"], rep.levels["y"]
        ys = ly if isinstance(ly, list) else [ly]
        fig, axes = plt.subplots(1, len(ys), figsize=(5.5 * len(ys), 4.5), squeeze=False)
        for ax, yk in zip(axes[0], ys, strict=True):
            x0 = None
            for cell, ds in cells.items():
                m = ds[0].run.method
                _, mx = _mean_series(ds, lx)
                _, my = _mean_series(ds, yk)
                if mx.size and mx.size == my.size:
                    x0 = mx[0]
                    ax.plot(mx, my, color=col[m], linestyle=sty[cell], marker="o", ms=3, label=cell)
            for g in rep.levels.get("gains", []):
                if x0 is not None:
                    ax.axvline(x0 + g, color="grey", lw=0.6, alpha=0.6)
            ax.set_xlabel(_short(lx) + " (trained)")
            ax.set_ylabel(_short(yk))
            ax.set_title("over training, mean over seeds (grey: base + gains)", fontsize=9)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "levels.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _short(key: str | list[str]) -> str:
    """A label: a key, or ``mean(a, b)`` of a list of keys without their common prefix."""
    if isinstance(key, str):
        return key
    import textwrap

    names = [k.split("/")[-1].removeprefix("strict_") for k in key]
    return "\n".join(textwrap.wrap("mean strict accuracy: " + ", ".join(names), 40))
