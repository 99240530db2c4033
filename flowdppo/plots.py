"""``flowdppo plot``: reward, KL-to-base and reward-vs-KL curves of one or more runs (PNG)."""

from __future__ import annotations

from pathlib import Path

from flowdppo.trainer.logging import read_metrics


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iter"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _moving_average(ys: list[float], k: int) -> list[float]:
    """Trailing mean over up to ``k`` points (the per-iteration reward is a noisy estimate)."""
    return [
        sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1])
        for i in range(len(ys))
    ]


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Four panels: training reward, exact KL to the base model, eval score, eval score vs KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for run in run_dirs:
        train, ev = read_metrics(Path(run), "train"), read_metrics(Path(run), "eval")
        label = Path(run).name
        xs, ys = _series(train, "reward/mean")
        (line,) = axes[0].plot(xs, ys, alpha=0.3)
        axes[0].plot(
            xs,
            _moving_average(ys, 10),
            color=line.get_color(),
            label=f"{label} (10-iteration mean)",
        )
        axes[1].plot(*_series(train, "kl/ref_mean"), label=label)
        key = (
            "eval/strict_overall"
            if any("eval/strict_overall" in r for r in ev)
            else "eval/reward_mean"
        )
        xs, ys = _series(ev, key)
        axes[2].plot(xs, ys, marker="o", label=label)
        # kl/ref_mean of train line i+1 is measured on the rollouts of the policy after i
        # iterations: the policy that eval line i evaluates.
        # It is logged every train.kl_ref_every iterations only (with loss.beta = 0).
        kl = {r["iter"] - 1: r["kl/ref_mean"] for r in train if "kl/ref_mean" in r}
        pts = [(kl[x], y) for x, y in zip(xs, ys, strict=True) if x in kl]
        axes[3].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        axes[2].set_ylabel(key)
        axes[3].set_ylabel(key)
    axes[0].set(title="training reward", xlabel="iteration", ylabel="reward/mean")
    axes[1].set(
        title="exact KL(π_θ ‖ π_base) on trained steps", xlabel="iteration", ylabel="kl/ref_mean"
    )
    axes[1].set_yscale("symlog", linthresh=1e-6)
    axes[2].set(title="evaluation (held-out prompts)", xlabel="iteration")
    axes[3].set(title="evaluation vs KL to base", xlabel="kl/ref_mean")
    axes[3].set_xscale("symlog", linthresh=1e-6)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
