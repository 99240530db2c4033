"""Run logs: ``metrics.jsonl`` (one JSON object per line) and TensorBoard events.

Training lines: ``{"kind": "train", "iter": i, <metric>: value, ...}``; evaluation lines:
``{"kind": "eval", "iter": i, "eval/...": value}``. Metric names are documented in
``docs/metrics.md`` (a test checks every logged key is).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RunLogger:
    """Appends metric lines, one per (kind, iteration): on resume, the lines after the resumed
    iteration are dropped first (``resume_iter=-1``: all of them, a run started over); a line
    logged again for the same (kind, iteration) replaces the old one."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_iter: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self._logged: set[tuple[str, int]] = set()
        if not enabled:
            return
        if resume_iter is not None and self.path.exists():
            rows = [r for r in _rows(self.path) if r["iter"] <= resume_iter]
            self._write(rows)
        elif self.path.exists():
            self._logged = {(r["kind"], r["iter"]) for r in _rows(self.path)}
        try:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, TensorBoard drops the events of steps after the checkpoint (written by
            # the interrupted run, about to be redone), as metrics.jsonl drops their lines.
            purge = resume_iter + 1 if resume_iter is not None else None
            # Written in the background: a queue that holds many iterations' scalars and a file
            # flushed every 10 s (and on close), so ``log`` never waits for the writer thread
            # (a flush per iteration, or a full 10-event queue, cost ms on a busy machine).
            self._tb = SummaryWriter(
                str(run_dir / "tensorboard"), purge_step=purge, max_queue=1000, flush_secs=10
            )
        except ImportError:  # tensorboard is optional for logging
            self._tb = None

    def _write(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(self.path)
        self._logged = {(r["kind"], r["iter"]) for r in rows}

    def has(self, kind: str, iteration: int) -> bool:
        """Whether a line of this kind and iteration is already in metrics.jsonl."""
        return (kind, iteration) in self._logged

    def log(self, kind: str, iteration: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {
            "kind": kind,
            "iter": iteration,
            **{k: _clean(v) for k, v in sorted(metrics.items())},
        }
        if self.has(kind, iteration):  # never two lines for one (kind, iteration)
            self._write(
                [r for r in _rows(self.path) if (r["kind"], r["iter"]) != (kind, iteration)]
            )
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._logged.add((kind, iteration))
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _rows(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl; a line that is not a metric object is an error naming it
    (a last line cut short by a crash mid-write is dropped: it was never a whole line)."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    rows = []
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except ValueError as err:
            if n == len(lines):  # no newline after it: a write cut short
                continue
            raise ValueError(f"{path}:{n}: not a JSON metric line ({err})") from None
        if not isinstance(row, dict) or not {"kind", "iter"} <= set(row):
            raise ValueError(f"{path}:{n}: expected a JSON object with 'kind' and 'iter'")
        rows.append(row)
    return rows


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The metric lines of a run (optionally only one kind)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a flowdppo run directory?")
    return [r for r in _rows(path) if kind is None or r["kind"] == kind]
