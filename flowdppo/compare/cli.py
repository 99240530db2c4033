"""The ``flowdppo compare`` command: run a spec's grid (resumable), then write its report.

flowdppo compare SPEC.yaml --out DIR [--jobs N] [--threads T] [--seeds S ...] [--allow-changed]
flowdppo compare --report-only DIR
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="the experiment spec (YAML; docs/compare.md)")
    p.add_argument("--out", help="the grid's directory (runs/, logs/, report.md, summary.json)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each run (default 1)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the runs (default 10)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="run these seeds instead of the spec's (e.g. to check its verdicts with other "
        "seeds; use a new --out); recorded in the grid and its report",
    )
    p.add_argument(
        "--allow-changed",
        action="store_true",
        help="go on although the spec changed since the grid started",
    )
    p.add_argument("--report-only", metavar="DIR", help="rebuild DIR's report without training")
    p.add_argument(
        "--max-runs", type=int, help="start at most this many unfinished runs, then report"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_from_args(a: argparse.Namespace) -> int:
    from flowdppo.compare.report import build_report
    from flowdppo.compare.runner import run_grid
    from flowdppo.compare.spec import SpecError, load_spec

    if a.report_only:
        out = Path(a.report_only)
        spec_path = Path(a.spec) if a.spec else out / "spec.yaml"
        if not spec_path.exists():
            raise SpecError(f"--report-only {out}: no spec.yaml there (is it a compare directory?)")
        grid = out / "grid.json"
        saved = json.loads(grid.read_text()) if grid.exists() else {}
        spec = load_spec(spec_path, seeds=a.seeds or saved.get("seeds"))
        if saved:  # the copy is spec.yaml; the grid was named after the spec's file
            spec.name = Path(saved["spec"]).stem
        command = f"flowdppo compare --report-only {out}"
    else:
        if not a.spec or not a.out:
            raise SpecError("flowdppo compare: give SPEC.yaml and --out DIR (or --report-only DIR)")
        spec = load_spec(a.spec, seeds=a.seeds)
        out = Path(a.out)
        try:
            res = run_grid(
                spec,
                out,
                jobs=a.jobs,
                threads=a.threads,
                nice=a.nice,
                allow_changed=a.allow_changed,
                progress=not a.no_progress,
                max_runs=a.max_runs,
            )
        except KeyboardInterrupt:
            print(f"compare: stopped; the same command resumes the grid in {out}", file=sys.stderr)
            return 130
        command = " ".join(
            ["flowdppo compare", shlex.quote(str(a.spec)), "--out", shlex.quote(str(out))]
            + (["--seeds", *map(str, a.seeds)] if a.seeds else [])
        )
        print(
            f"compare: {res['done']}/{res['total']} runs done, {len(res['failed'])} failed",
            file=sys.stderr,
        )
        if res["failed"]:
            print("failed: " + ", ".join(res["failed"]), file=sys.stderr)
    summary = build_report(spec, out, command)
    print(
        f"report: {out / 'report.md'} ({'complete' if summary['complete'] else 'incomplete grid'})"
    )
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to the ``flowdppo`` CLI; sets ``func``."""
    p = subparsers.add_parser(
        "compare",
        help="run a grid of runs (methods × settings × seeds) from a spec; report and verdicts",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p
