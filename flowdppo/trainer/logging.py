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
    """Appends metric lines; on resume, lines after the resumed iteration are dropped first."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_iter: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_iter is not None and self.path.exists():
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["iter"] <= resume_iter
            ]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, TensorBoard drops the events of steps after the checkpoint (written by
            # the interrupted run, about to be redone), as metrics.jsonl drops their lines.
            purge = resume_iter + 1 if resume_iter is not None else None
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        except ImportError:  # tensorboard is optional for logging
            self._tb = None

    def log(self, kind: str, iteration: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {
            "kind": kind,
            "iter": iteration,
            **{k: _clean(v) for k, v in sorted(metrics.items())},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, iteration)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The metric lines of a run (optionally only one kind)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a flowdppo run directory?")
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]
