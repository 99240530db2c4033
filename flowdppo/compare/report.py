"""The grid's report: ``report.md``, PNG plots and ``summary.json`` from the runs' metrics.

Everything is computed from ``runs/<run>/metrics.jsonl`` (docs/metrics.md), so ``flowdppo
compare --report-only DIR`` rebuilds it without training. Statistics (stated in docs/compare.md
before any run): per cell, mean ± std over seeds and a 95% Student-t interval of the mean; a
method is compared with the reference method by Welch's t-test at 95% on the per-seed values of
each method's best cell (the cell of highest mean on that measure: every method is chosen from
the same number of trust-region sizes, so each gets the same tuning effort). A difference is
reported as one only when the 95% interval of the difference excludes 0; otherwise "not
distinguishable at this budget". A cell whose constraint blocked less than
``report.binding_min_frac`` of its terms (mean over iterations) is marked "not binding", and a
verdict between two such cells is "not binding", never a win or a tie.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowdppo.compare.spec import Run, Spec

BLOCK_METRIC = {"flow_dppo": "mask/frac", "ratio_clip": "clip/frac", "grpo_guard": "clip/frac"}


@dataclass
class RunData:
    run: Run
    evals: list[dict[str, Any]] = field(default_factory=list)  # sorted by iter
    trains: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str | list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(iters, values) of an eval metric (a list of keys: their mean) where logged."""
        keys = [key] if isinstance(key, str) else key
        pts = [
            (e["iter"], float(np.mean([e[k] for k in keys])))
            for e in self.evals
            if all(e.get(k) is not None for k in keys)
        ]
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    def final(self, key: str | list[str]) -> float:
        _, v = self.series(key)
        return float(v[-1]) if v.size else math.nan

    def first(self, key: str | list[str]) -> float:
        _, v = self.series(key)
        return float(v[0]) if v.size else math.nan


def read_run(run_dir: Path, run: Run) -> RunData:
    data = RunData(run)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return data
    evals: dict[int, dict] = {}
    trains: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evals if row.get("kind") == "eval" else trains)[row["iter"]] = row  # last row wins
    data.evals = [evals[i] for i in sorted(evals)]
    data.trains = [trains[i] for i in sorted(trains)]
    return data


# -- per-run measures ----------------------------------------------------------------------------
def binding(d: RunData) -> dict[str, Any]:
    """How much the run's trust region acted: blocked fraction of terms, old-new KL vs δ."""
    loss = d.run.config.loss
    key = BLOCK_METRIC.get(loss.name, "mask/frac")
    fr = np.array([t.get(key) or 0.0 for t in d.trains]) if d.trains else np.zeros(0)
    kl = np.array([t.get("kl/old_new_mean") or 0.0 for t in d.trains])
    size = loss.delta if loss.name == "flow_dppo" else loss.clip_range
    return {
        "blocked_metric": key,
        "blocked_frac_mean": float(fr.mean()) if fr.size else math.nan,
        "iters_blocking_frac": float((fr > 0).mean()) if fr.size else math.nan,
        "old_new_kl_median": float(np.median(kl)) if kl.size else math.nan,
        "size": size,
        "size_name": "delta" if loss.name == "flow_dppo" else "clip_range",
    }


def budget_value(x: np.ndarray, y: np.ndarray, b: float) -> float:
    """max y over the trajectory restricted to x ≤ b (the crossing point linearly interpolated)."""
    best = -math.inf
    for i in range(len(x)):
        if x[i] <= b:
            best = max(best, y[i])
        if i and x[i - 1] <= b < x[i]:
            t = (b - x[i - 1]) / (x[i] - x[i - 1])
            best = max(best, y[i - 1] + t * (y[i] - y[i - 1]))
    return float(best) if best > -math.inf else math.nan


def crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """x where y first reaches ``level`` (linear between points); nan if never."""
    for i in range(len(y)):
        if y[i] >= level:
            if i == 0 or y[i - 1] == y[i]:
                return float(x[i])
            t = (level - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + t * (x[i] - x[i - 1]))
    return math.nan


# -- statistics ----------------------------------------------------------------------------------
def describe(values: list[float]) -> dict[str, Any]:
    """mean, std (n-1), n and the 95% Student-t half-width of the mean, over finite values."""
    from scipy import stats

    v = np.array([x for x in values if np.isfinite(x)], dtype=float)
    n = int(v.size)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci95": math.nan}
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    hw = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": float(v.mean()), "std": sd, "n": n, "ci95": hw}


def welch(a: list[float], b: list[float]) -> dict[str, Any]:
    """Welch's t-test of mean(a) - mean(b): difference, its 95% interval, p-value."""
    from scipy import stats

    x = np.array([v for v in a if np.isfinite(v)])
    y = np.array([v for v in b if np.isfinite(v)])
    if x.size < 2 or y.size < 2:
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan}
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(x.mean() - y.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "lo": diff, "hi": diff, "p": 0.0 if diff else 1.0}
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    hw = float(stats.t.ppf(0.975, df) * se)
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {"diff": diff, "lo": diff - hw, "hi": diff + hw, "p": p}


def verdict(test: dict[str, Any], binds_a: bool, binds_b: bool) -> str:
    if not (binds_a or binds_b):
        return "not binding"
    if not np.isfinite(test["diff"]):
        return "too few seeds"
    if test["lo"] > 0:
        return "higher"
    if test["hi"] < 0:
        return "lower"
    return "not distinguishable"


# -- the report ----------------------------------------------------------------------------------
def collect(spec: Spec, out: Path) -> dict[str, list[RunData]]:
    """{cell: [RunData per seed]} for the finished runs: evaluated at their last iteration
    (``train.max_iters``). A run still going is left out, so that every "final" value of a cell
    is taken at the same iteration; the report says how many of a cell's seeds it holds."""
    cells: dict[str, list[RunData]] = {}
    for r in spec.runs:
        d = read_run(out / "runs" / r.name, r)
        if d.evals and d.evals[-1]["iter"] >= r.config.train.max_iters:
            cells.setdefault(r.cell, []).append(d)
    return cells


def run_measures(spec: Spec, d: RunData, base: dict[str, float]) -> dict[str, Any]:
    rep = spec.report
    x, y = d.series(rep.kl)
    xr, yr = d.series(rep.reward)
    m: dict[str, Any] = {
        "final/" + rep.reward: d.final(rep.reward),
        "final/" + rep.kl: d.final(rep.kl),
        "iters": d.trains[-1]["iter"] if d.trains else 0,
    }
    for k in rep.metrics:
        m["final/" + k] = d.final(k)
    if x.size and np.array_equal(x, xr):  # reward and KL at the same evaluations
        kl_v, rw_v = y, yr
        for b in rep.kl_budgets:
            m[f"reward_at_kl<={b:g}"] = budget_value(kl_v, rw_v, b)
        for r in rep.reward_targets:
            m[f"kl_to_reach_{r:g}"] = crossing(kl_v, rw_v, r)
        for g in rep.reward_gains:
            m[f"kl_to_gain_{g:g}"] = crossing(kl_v, rw_v, base.get(rep.reward, rw_v[0]) + g)
    if rep.levels:
        lx, ly = rep.levels["x"], rep.levels["y"]
        it_x, vx = d.series(lx)
        x0 = base.get(_name(lx), vx[0] if vx.size else math.nan)
        targets = [(f"{v:g}", v) for v in rep.levels.get("levels", [])]
        targets += [(f"base+{g:g}", x0 + g) for g in rep.levels.get("gains", [])]
        for tag, lv in targets:
            at = crossing(it_x.astype(float), vx, lv)  # the iteration where x reaches the level
            for yk in ly if isinstance(ly, list) else [ly]:
                it_y, vy = d.series(yk)
                val = float(np.interp(at, it_y, vy)) if np.isfinite(at) and it_y.size else math.nan
                m[f"{_name(yk)}@{_name(lx)}>={tag}"] = val
    if rep.objectives:
        gains = [d.final(o) - base.get(o, d.first(o)) for o in rep.objectives]
        for o, g in zip(rep.objectives, gains, strict=True):
            m["gain/" + o] = g
    if rep.collapse:
        metric = rep.collapse["metric"]
        below = rep.collapse.get("below", "base")
        floor = base.get(metric, d.first(metric)) if below == "base" else float(below)
        floor -= float(rep.collapse.get("margin", 0.0))
        _, v = d.series(metric)
        m["collapsed"] = float(bool(v.size > 1 and (v[1:] < floor).any()))
    samples = d.run.config.sampling.prompts_per_iter * d.run.config.sampling.group_size
    gain = m["final/" + rep.reward] - base.get(rep.reward, d.first(rep.reward))
    m["gain/" + rep.reward] = gain
    m["gain_per_1k_samples"] = 1000 * gain / max(1, m["iters"] * samples)
    m.update({"binding/" + k: v for k, v in binding(d).items()})
    return m


def _name(k: str | list[str]) -> str:
    return "mean(" + ",".join(k) + ")" if isinstance(k, list) else k


def build_report(spec: Spec, out: Path, command: str = "") -> dict[str, Any]:
    """Write ``report.md``, plots and ``summary.json`` into ``out``; returns the summary."""
    rep = spec.report
    cells = collect(spec, out)
    if not cells:
        raise FileNotFoundError(
            f"{out}: no run of {spec.path} has an evaluation yet; nothing to report"
        )
    logged = {k for ds in cells.values() for d in ds for e in d.evals for k in e}
    if rep.reward not in logged or rep.kl not in logged:
        from flowdppo.compare.spec import SpecError

        missing = [k for k in (rep.reward, rep.kl) if k not in logged]
        shown = sorted(k for k in logged if k.startswith("eval/"))
        raise SpecError(
            f"{spec.path}: report.reward/report.kl: {missing} in no run's evaluation lines; "
            f"the runs log {shown}"
        )
    # The base model's values: every run's iteration-0 evaluation is of the same base model with
    # the same prompts and noise, so they agree; their mean is used.
    keys: list = [rep.reward, rep.kl, *rep.metrics, *rep.objectives]
    if rep.collapse:
        keys.append(rep.collapse["metric"])
    if rep.levels:
        keys.append(rep.levels["x"])
    base = {
        _name(k): float(np.nanmean([d.first(k) for ds in cells.values() for d in ds])) for k in keys
    }
    per_run = {d.run.name: run_measures(spec, d, base) for ds in cells.values() for d in ds}
    measures = sorted(
        {k for m in per_run.values() for k in m if not k.startswith("binding/")} - {"iters"}
    )
    if rep.objectives:
        measures.append("worse_normalised_gain")
        best_gain = {
            o: max(
                float(np.nanmean([per_run[d.run.name]["gain/" + o] for d in ds]))
                for ds in cells.values()
            )
            for o in rep.objectives
        }
        for m in per_run.values():
            m["worse_normalised_gain"] = min(
                m["gain/" + o] / best_gain[o] if best_gain[o] > 0 else math.nan
                for o in rep.objectives
            )
    table: dict[str, dict[str, Any]] = {}
    for cell, ds in cells.items():
        ms = [per_run[d.run.name] for d in ds]
        row = {k: describe([m.get(k, math.nan) for m in ms]) for k in measures}
        row["binds"] = bool(
            np.nanmean([m["binding/blocked_frac_mean"] for m in ms]) >= rep.binding_min_frac
        )
        row["binding"] = {
            k: float(np.nanmean([m["binding/" + k] for m in ms]))
            for k in ("blocked_frac_mean", "iters_blocking_frac", "old_new_kl_median", "size")
        }
        row["method"], row["seeds"] = ds[0].run.method, [d.run.seed for d in ds]
        row["point"] = ds[0].run.point
        row["iters_done"] = [per_run[d.run.name]["iters"] for d in ds]
        table[cell] = row
    verdicts = _verdicts(spec, table, per_run, cells, measures)
    summary = {
        "spec": str(spec.path),
        "spec_digest": spec.digest(),
        "question": spec.question,
        "command": command,
        "seeds": spec.seeds,
        "environment": environment(spec),
        "invocations": invocations(out),
        "base": base,
        "cells": table,
        "runs": per_run,
        "verdicts": verdicts,
        "complete": all(
            len(table.get(c, {}).get("seeds", [])) == len(spec.seeds)
            and min(table[c]["iters_done"]) >= max(r.config.train.max_iters for r in spec.runs)
            for c in spec.cells
            if c in table
        )
        and len(table) == len(spec.cells),
    }
    from flowdppo.compare.markdown import write_markdown
    from flowdppo.compare.plots import write_plots

    plots = write_plots(spec, cells, out)
    if rep.ratio_rules:
        summary["ratio_noise"], picture = ratio_noise(spec, cells, out)
        plots.append(picture)
    summary["plots"] = [p.name for p in plots]
    (out / "summary.json").write_text(json.dumps(_finite(summary), indent=1, default=str))
    write_markdown(spec, summary, out)
    return summary


def _verdicts(spec, table, per_run, cells, measures) -> list[dict[str, Any]]:
    """Reference method's best cell vs every other method's best cell, per headline measure: the
    final reward, the reward within each KL budget, each ``levels`` measure (read at a like
    gain) and the worse normalised gain. With ``report.group_by``, one comparison per value of
    that key (each method's best cell among those with the value), e.g. per updates per rollout."""
    rep = spec.report
    methods = list(spec.methods)
    ref = rep.reference or methods[0]
    heads = ["final/" + rep.reward] + [
        m for m in measures if m.startswith("reward_at_kl") or ("@" in m and ">=" in m)
    ]
    if rep.objectives:
        heads.append("worse_normalised_gain")
    if rep.group_by is not None:
        groups = sorted({row["point"].get(rep.group_by) for row in table.values()}, key=str)
    else:
        groups = [None]
    out = []
    for g in groups:
        for h in heads:
            best = {}
            for meth in methods:
                cand = [
                    c
                    for c, row in table.items()
                    if row["method"] == meth
                    and np.isfinite(row[h]["mean"])
                    and (g is None or row["point"].get(rep.group_by) == g)
                ]
                if cand:
                    best[meth] = max(cand, key=lambda c: table[c][h]["mean"])
            if ref not in best:
                continue
            vals = {m: [per_run[d.run.name][h] for d in cells[c]] for m, c in best.items()}
            for meth in methods:
                if meth == ref or meth not in best:
                    continue
                t = welch(vals[ref], vals[meth])
                out.append(
                    {
                        "measure": h if g is None else f"{h} ({rep.group_by} = {g})",
                        "reference": ref,
                        "reference_cell": best[ref],
                        "other": meth,
                        "other_cell": best[meth],
                        **t,
                        "verdict": verdict(
                            t, table[best[ref]]["binds"], table[best[meth]]["binds"]
                        ),
                    }
                )
    return out


def environment(spec: Spec) -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    precisions = sorted({r.config.sampling.untrained_precision for r in spec.runs})
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "torch": torch.__version__,
        "cpu": cpu,
        "gpu": gpu,
        "python": platform.python_version(),
        "untrained_precision": precisions,
    }


def invocations(out: Path) -> list[dict[str, Any]]:
    """The grid's ``flowdppo compare`` invocations (machine, jobs, threads), oldest first."""
    path = out / "invocations.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finite(obj: Any) -> Any:
    """JSON-safe: nan/inf become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def ratio_noise(spec: Spec, cells: dict[str, list[RunData]], out: Path) -> tuple[dict, Path]:
    """Per method, the sampled terms of all its runs (``train.diagnostic_terms``): per step index
    the correlation of |ρ − 1| with sqrt(KL) and how often each rule blocks what the other
    passes (``flowdppo.diagnostics``), for the spec's ``report.ratio_rules``; and the scatter."""
    from flowdppo.diagnostics import by_step, plot_ratio, read_terms

    rules = spec.report.ratio_rules
    pooled: dict[str, list[dict]] = {}
    for ds in cells.values():
        for d in ds:
            try:
                terms = read_terms(out / "runs" / d.run.name)
            except FileNotFoundError:
                continue
            pooled.setdefault(d.run.method, []).extend(terms)
    table = {m: by_step(t, rules["delta"], rules["clip_range"]) for m, t in pooled.items()}
    return table, plot_ratio(pooled, out / "ratio_kl.png", rules["delta"], rules["clip_range"])
