"""Run a spec's grid: each run an ordinary ``flowdppo train`` run directory, resumable.

``DIR/`` holds ``spec.yaml`` (a copy of the spec as first run), ``grid.json`` (the spec's digest
and every run's resolved config, to refuse a changed spec), ``configs/<run>.yaml``,
``runs/<run>/`` (the run directories) and ``logs/<run>.log`` (each run's output). A run is
done when ``runs/<run>/DONE`` exists; an unfinished run with a checkpoint is resumed with
``flowdppo resume``; one without (killed before its first checkpoint) is started over.
Runs are subprocesses, ``jobs`` at a time, each with ``threads`` CPU threads (the
``OMP_NUM_THREADS`` of its process: the run's config is not changed by it), at low priority
(``nice``) so that interactive work on the machine stays responsive.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from flowdppo.compare.spec import Run, Spec, SpecError, changed_keys
from flowdppo.config import ConfigError
from flowdppo.config.load import config_from_dict, config_to_dict


def _runs_dir(out: Path) -> Path:
    return out / "runs"


def train_rows(run_dir: Path) -> int:
    """Iterations logged by a run so far (distinct ``iter`` of its ``train`` lines; 0 if none)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    its = set()
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if row.get("kind") == "train":
                its.add(row.get("iter"))
    return len(its)


def _resolved(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's config as grid.json saved it, read by today's schema (as ``resume`` reads a run's
    config.yaml): a key added since takes its default, which keeps the old behaviour, so it is
    no change. A config today's schema refuses (a key removed since) is compared as saved."""
    try:
        return json.loads(json.dumps(config_to_dict(config_from_dict(saved)), default=str))
    except ConfigError:
        return saved


def check_grid(spec: Spec, out: Path, allow_changed: bool) -> None:
    """Refuse a spec that changed since the grid in ``out`` started (unless allowed)."""
    lock = out / "grid.json"
    configs = {r.name: r.config_dict() for r in spec.runs}
    if lock.exists():
        old = json.loads(lock.read_text())
        saved = {n: _resolved(c) for n, c in old["configs"].items()}
        diff = changed_keys(saved, json.loads(json.dumps(configs, default=str)))
        if diff and not allow_changed:
            shown = "; ".join(diff[:8]) + (f"; ... ({len(diff)} in all)" if len(diff) > 8 else "")
            raise SpecError(
                f"{spec.path}: the spec changed since the grid in {out} started: {shown}. "
                "Use another --out, or --allow-changed to go on with the new spec "
                "(finished runs are kept as they are)"
            )
        if diff:
            print(
                f"compare: spec changed ({len(diff)} differences), going on: --allow-changed",
                file=sys.stderr,
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    _runs_dir(out).mkdir(exist_ok=True)
    shutil.copyfile(spec.path, out / "spec.yaml")
    lock.write_text(
        json.dumps(
            {
                "spec": str(spec.path),
                "seeds": spec.seeds,
                "digest": spec.digest(),
                "configs": configs,
            },
            indent=1,
            default=str,
        )
    )


def _command(run: Run, out: Path) -> list[str]:
    run_dir = _runs_dir(out) / run.name
    exe = [sys.executable, "-m", "flowdppo.cli"]
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        return [*exe, "resume", str(run_dir)]
    if run_dir.exists():  # killed before its first checkpoint: nothing to keep
        shutil.rmtree(run_dir)
    cfg_path = out / "configs" / f"{run.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(run.config_dict(), sort_keys=False))
    return [*exe, "train", str(cfg_path), "--out", str(run_dir)]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def is_done(out: Path, run: Run) -> bool:
    return (_runs_dir(out) / run.name / "DONE").exists()


def run_grid(
    spec: Spec,
    out: Path,
    jobs: int = 1,
    threads: int = 1,
    nice: int = 10,
    allow_changed: bool = False,
    progress: bool = True,
    max_runs: int | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of ``spec`` into ``out``; returns {done, failed, skipped}."""
    if jobs < 1 or threads < 1:
        raise SpecError(f"--jobs and --threads must be >= 1, got {jobs} and {threads}")
    out.mkdir(parents=True, exist_ok=True)
    lock = (out / ".lock").open("w")
    try:  # two compares on one grid would start the same runs twice
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SpecError(f"{out}: another flowdppo compare is running on this grid") from None
    check_grid(spec, out, allow_changed)
    from flowdppo.compare.report import environment

    with (out / "invocations.jsonl").open("a") as f:
        row = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "jobs": jobs,
            "threads": threads,
            "argv": ["flowdppo", *sys.argv[1:]]
            if sys.argv[0].endswith(("flowdppo", "cli.py"))
            else sys.argv,
        }
        f.write(json.dumps({**row, **environment(spec)}) + "\n")
    todo = [r for r in spec.runs if not is_done(out, r)]
    if max_runs is not None:
        todo = todo[:max_runs]
    total_iters = sum(r.config.train.max_iters for r in spec.runs)
    done_iters = sum(
        r.config.train.max_iters if is_done(out, r) else train_rows(_runs_dir(out) / r.name)
        for r in spec.runs
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("PYTHONUNBUFFERED", "1")
    bar = tqdm(
        total=total_iters, initial=done_iters, unit="it", desc="compare", disable=not progress
    )
    n_done = len(spec.runs) - len(todo)
    running: dict[str, tuple[subprocess.Popen, Run, Any]] = {}
    failed: list[str] = []
    queue = list(todo)
    seen = {r.name: train_rows(_runs_dir(out) / r.name) for r in todo}
    # SIGTERM (a scheduler, ``kill``) and SIGINT stop the grid the same way; both are installed
    # explicitly since a shell's background job starts with SIGINT ignored.
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                run = queue.pop(0)
                log = (out / "logs" / f"{run.name}.log").open("a")
                cmd = _command(run, out)
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=(lambda: os.nice(nice)) if nice else None,
                )
                running[run.name] = (proc, run, log)
            time.sleep(1.0)
            for name, (proc, _run, log) in list(running.items()):
                rows = train_rows(_runs_dir(out) / name)
                bar.update(max(0, rows - seen[name]))
                seen[name] = max(seen[name], rows)
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[name]
                if code == 0:
                    (_runs_dir(out) / name / "DONE").write_text(
                        time.strftime("%Y-%m-%dT%H:%M:%S\n")
                    )
                    n_done += 1
                else:
                    failed.append(name)
                    bar.write(
                        f"run {name} failed (exit {code}); its output: {out / 'logs' / (name + '.log')}"
                    )
                bar.set_postfix(runs=f"{n_done}/{len(spec.runs)}", failed=len(failed))
    except KeyboardInterrupt:
        bar.write("compare: stopping; each running run saves its current iteration ...")
        for proc, _, _ in running.values():
            proc.send_signal(signal.SIGINT)  # each run saves its iteration and stops
        for proc, _, log in running.values():
            proc.wait()
            log.close()
        bar.close()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    bar.close()
    return {"done": n_done, "failed": failed, "total": len(spec.runs)}
