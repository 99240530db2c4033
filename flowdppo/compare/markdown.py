"""``report.md``: the question, the command, the machine, the tables and the verdicts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flowdppo.compare.spec import Spec


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{v:.2e}"
    return f"{v:.3f}" if a < 10 else f"{v:.1f}"


def _cellval(d: dict[str, Any], seeds: int) -> str:
    """mean ± std; with "(k/n)" when only k of the n seeds have a value (e.g. a reward reached)."""
    if d["n"] == 0:
        return f"– (0/{seeds})"
    s = _num(d["mean"])
    if d["n"] > 1:
        s += f" ± {_num(d['std'])}"
    return s + (f" ({d['n']}/{seeds})" if d["n"] < seeds else "")


def write_markdown(spec: Spec, summary: dict[str, Any], out: Path) -> Path:
    rep, cells = spec.report, summary["cells"]
    inv = summary.get("invocations") or []
    ran = []
    for i in inv:
        where = i.get("gpu") or i.get("cpu", "?")
        cmd = " ".join(i["argv"]) if i.get("argv") else "flowdppo compare"
        ran.append(
            f"`{cmd}` on {i['time'][:10]}: {where}, torch {i.get('torch', '?')}, "
            f"{i['jobs']} runs at a time × {i['threads']} threads"
        )
    precision = ", ".join(summary["environment"]["untrained_precision"])
    lines = [
        f"# {spec.name}",
        "",
        f"**Question.** {spec.question}" if spec.question else "",
        "",
        f"Spec `experiments/{spec.name}.yaml` (digest `{summary['spec_digest']}`), seeds {spec.seeds}, rollout "
        f"precision of the untrained steps: {precision}. The runs were made by:",
        "",
        *(f"- {r}" for r in ran or ["(no invocation recorded)"]),
        "",
        f"This page was written by `{summary['command']}`.",
        "",
    ]
    if not summary["complete"]:
        lines += [
            "> **Incomplete grid**: not every run has finished; the numbers below cover the runs "
            "and iterations done so far (column *iters*).",
            "",
        ]
    if spec.notes:
        lines += [spec.notes.strip(), ""]
    lines += [
        "Statistics (fixed before the runs): mean ± std over seeds; a verdict compares the "
        "reference method's best cell with each other method's best cell (each chosen among "
        "the same number of trust-region sizes) by Welch's t-test at 95%; *higher*/*lower* only "
        "when the 95% interval of the difference excludes 0. A cell is *binding* when its "
        f"constraint blocked ≥ {rep.binding_min_frac:g} of the terms on average.",
        "",
        "## Verdicts",
        "",
        "| measure | reference (best cell) | other (best cell) | difference [95% CI] | p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in summary["verdicts"]:
        lines.append(
            f"| {v['measure']} | {v['reference_cell']} | {v['other_cell']} | "
            f"{_num(v['diff'])} [{_num(v['lo'])}, {_num(v['hi'])}] | {_num(v['p'])} | "
            f"**{v['reference']} {v['verdict']}** |"
            if v["verdict"] in ("higher", "lower")
            else f"| {v['measure']} | {v['reference_cell']} | {v['other_cell']} | "
            f"{_num(v['diff'])} [{_num(v['lo'])}, {_num(v['hi'])}] | {_num(v['p'])} | {v['verdict']} |"
        )
    lines += ["", "## What the trust region did", ""]
    lines += [
        "| cell | size | blocked fraction of terms (mean) | iterations that blocked any | median old–new KL per iteration | binding |",
        "|---|---|---|---|---|---|",
    ]
    for cell, row in cells.items():
        b = row["binding"]
        lines.append(
            f"| {cell} | {_num(b['size'])} | {_num(b['blocked_frac_mean'])} | "
            f"{_num(b['iters_blocking_frac'])} | {_num(b['old_new_kl_median'])} | "
            f"{'yes' if row['binds'] else '**no**'} |"
        )
    measures = [
        k
        for k in next(iter(cells.values()))
        if isinstance(next(iter(cells.values()))[k], dict)
        and "mean" in next(iter(cells.values()))[k]
    ]
    lines += ["", "## Every cell (mean ± std over seeds)", ""]
    for chunk in [measures[i : i + 6] for i in range(0, len(measures), 6)]:
        lines += [
            "| cell | seeds | iters | " + " | ".join(chunk) + " |",
            "|---" * (3 + len(chunk)) + "|",
        ]
        for cell, row in cells.items():
            lines.append(
                f"| {cell} | {len(row['seeds'])} | {min(row['iters_done'])} | "
                + " | ".join(_cellval(row[k], len(row["seeds"])) for k in chunk)
                + " |"
            )
        lines.append("")
    if summary.get("ratio_noise"):
        r = rep.ratio_rules
        lines += [
            f"## The ratio against the exact divergence (δ = {r['delta']:g}, ε = {r['clip_range']:g})",
            "",
            "Sampled (sample, step) terms of every run of a method (`train.diagnostic_terms`); "
            "*corr*: correlation of |ρ − 1| with sqrt(KL); *clip only* / *mask only*: terms one "
            "rule blocks and the other lets through (`flowdppo.diagnostics`).",
            "",
            "| method | step | terms | mean KL | mean abs(ρ − 1) | corr | clip blocks | mask blocks | clip only | mask only |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m, rows in summary["ratio_noise"].items():
            for x in rows:
                lines.append(
                    f"| {m} | {x['step']} | {x['terms']} | {_num(x['kl_mean'])} | "
                    f"{_num(x['abs_rho_minus_1_mean'])} | {_num(x['corr'])} | "
                    f"{_num(x['clip_frac'])} | {_num(x['mask_frac'])} | "
                    f"{_num(x['clip_only_frac'])} | {_num(x['mask_only_frac'])} |"
                )
        lines.append("")
    lines += ["## Base model (iteration 0)", ""]
    lines += [f"- {k}: {_num(v)}" for k, v in sorted(summary["base"].items())]
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in summary.get("plots", [])]
    lines += [
        "",
        f"Every number above is in `summary.json`; rebuild this page with `flowdppo compare --report-only {out}`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
