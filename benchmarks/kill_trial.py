"""Does a run killed with SIGKILL at a random moment resume to exactly the uninterrupted result?

An uninterrupted ``flowdppo train`` of a tiny random Shapes model (the tests'
``tests/trainer/tiny.py``: ``--iters`` iterations, a checkpoint after each, the Shapes evaluation
every ``--eval-every``) gives the reference and its wall time T (the process's, imports
included). Each trial trains the same run in a fresh folder and sends SIGKILL (``kill -9``, from
outside) a delay drawn uniformly from [0, T - t0] after the process wrote its ``config.yaml``,
T - t0 the time from an uninterrupted run's ``config.yaml`` to its end, measured again before
each trial (the machine's load changes it; before ``config.yaml`` the process imports and builds
the model and writes nothing; ``--from-start``: the delay is drawn from [0, T] of the reference
and counted from the process's start); then ``flowdppo resume`` (killed the same way
``--kills`` - 1 more times; ``flowdppo train`` again when the kill came before the run wrote
anything), and a last ``flowdppo resume`` to the end. After each kill the
newest checkpoint's files are checked against its manifest (a failure is *corrupt*) and where
the kill landed is read from the folder. At the end the final checkpoint's tensors (trainable
weights, optimizer state, RNG state) are compared bitwise with the reference's, and the metric
lines (bar wall-clock times) with the reference's lines.

    .venv/bin/python benchmarks/kill_trial.py [--trials 20] [--kills 2] [--iters 12] [--json OUT]

Printed: one line per trial, then trials, kills, resumed (every resume exited 0), identical
(tensors and metric lines equal to the reference's), corrupt (must be 0), and where the kills
landed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"


def flowdppo(
    args: list[str], kill_after: float | None = None, watch: Path | None = None
) -> tuple[int, float, str, float | None]:
    """Run ``flowdppo ARGS``; SIGKILL it ``kill_after`` s after it wrote ``watch`` (a file it
    writes when its run starts: ``config.yaml``; None: after its start), if still running.
    Returns (exit code, -9 when killed; wall seconds; stderr's tail; seconds from the start
    until ``watch`` was written, or None)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("FLOWDPPO_KILL_AT", None)
    t0, wall0 = time.monotonic(), time.time()
    seen = None if watch is not None else 0.0
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowdppo.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        while proc.poll() is None:
            now = time.monotonic() - t0
            if seen is None and watch is not None and _written_since(watch, wall0):
                seen = now
            if kill_after is not None and seen is not None and now - seen >= kill_after:
                proc.kill()  # SIGKILL
                break
            time.sleep(0.01)
        code = proc.wait()
        err.seek(0)
        return code, time.monotonic() - t0, err.read()[-2000:], seen


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def landed(run: Path, since: float) -> str:
    """Where a kill left the run folder ``run`` (``since``: the killed process's start, as
    ``time.time()``; an older temporary folder is a former kill's, not this one's)."""
    from flowdppo.trainer.checkpoint import latest_checkpoint
    from flowdppo.trainer.logging import read_metrics

    if not (run / "config.yaml").exists():
        return "starting (no config.yaml yet)"
    root = run / "checkpoints"
    if any(p.stat().st_mtime >= since for p in root.glob(".tmp_iter_*")):
        return "writing a checkpoint (temporary folder)"
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return "before the first checkpoint"
    marker = root / "latest"
    newest = max(p.name for p in root.glob("iter_*"))
    if not marker.exists() or marker.read_text().strip() != newest:
        return "a checkpoint renamed, 'latest' not moved"
    lines = read_metrics(run, "train") if (run / "metrics.jsonl").exists() else []
    saved = int(ckpt.name.split("_")[1])
    if lines and lines[-1]["iter"] > saved:
        return "an iteration logged, not saved"
    return "inside an iteration (or between its save and the next)"


def corruption(run: Path) -> str | None:
    """None if the newest checkpoint (if any) matches its manifest, file by file; else why not."""
    from flowdppo.trainer.checkpoint import MANIFEST, CheckpointError, _checked, latest_checkpoint

    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return None
    try:
        names = json.loads((ckpt / MANIFEST).read_text())["files"]
        for name in names:
            _checked(ckpt, name)
    except (CheckpointError, OSError, ValueError, KeyError) as err:
        return f"{ckpt.name}: {err}"
    return None


def final_tensors(run: Path, iters: int) -> dict[str, torch.Tensor]:
    """The final checkpoint's trainable, optimizer and RNG tensors, by ``file.key``."""
    from safetensors.torch import load_file

    ckpt = run / "checkpoints" / f"iter_{iters:06d}"
    out: dict[str, torch.Tensor] = {}
    for name in ("trainable", "optimizer", "rng"):
        out.update({f"{name}.{k}": v for k, v in load_file(ckpt / f"{name}.safetensors").items()})
    return out


def differences(ref: Path, run: Path, iters: int) -> list[str]:
    """What differs between two finished runs: tensor names, or ``metrics.jsonl``."""
    from flowdppo.trainer.logging import read_metrics

    a, b = final_tensors(ref, iters), final_tensors(run, iters)
    out = sorted(set(a) ^ set(b))
    out += [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]

    def lines(r: Path) -> list[dict]:
        return [
            {k: v for k, v in row.items() if not k.startswith("time/")} for row in read_metrics(r)
        ]

    return out + (["metrics.jsonl"] if lines(ref) != lines(run) else [])


def trial(
    sets: list[str],
    out: Path,
    kills: int,
    horizon: tuple[float, float],
    rng: random.Random,
    from_start: bool = False,
) -> dict:
    """One trial: ``kills`` SIGKILLs at uniform moments in ``horizon`` (seconds after the process
    wrote ``config.yaml``, or with ``from_start`` after its start), then a resume to the end."""
    record: dict = {"kills": [], "resumed": True, "corrupt": []}
    watch = None if from_start else out / "config.yaml"
    args = ["train", "--out", str(out), *sets]
    for _ in range(kills):
        delay, started = rng.uniform(*horizon), time.time()
        code, _, err, _ = flowdppo(args, kill_after=delay, watch=watch)
        if code != -9:  # it finished (or failed) before the kill
            record["kills"].append(
                {"delay_s": round(delay, 2), "landed": f"not killed: exit {code}"}
            )
            record["resumed"] &= code == 0
            if code != 0:
                record["error"] = err
            break
        where = landed(out, started)
        bad = corruption(out)
        record["kills"].append({"delay_s": round(delay, 2), "landed": where})
        if bad:
            record["corrupt"].append(bad)
        # nothing of the run written yet (killed while importing): train it again
        args = ["resume", str(out)] if (out / "config.yaml").exists() else args
    else:
        code, _, err, _ = flowdppo(args)
        record["resumed"] &= code == 0
        if code != 0:
            record["error"] = err
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument(
        "--kills", type=int, default=2, help="SIGKILLs per trial before the last resume"
    )
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument(
        "--from-start",
        action="store_true",
        help="count kill moments from the process's start (default: from when it writes "
        "config.yaml; before it, imports and model building, nothing is written)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the trials and summary here")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders (printed)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    from trainer.tiny import build_tiny_checkpoint, tiny_overrides

    tmp = Path(tempfile.mkdtemp(prefix="kill_trial_"))
    extra = (f"train.max_iters={a.iters}", f"eval.every={a.eval_every}", "sampling.batch_size=2")
    overrides = tiny_overrides(build_tiny_checkpoint(tmp / "tiny.safetensors"), *extra)
    sets = [x for s in overrides for x in ("--set", s)]
    ref = tmp / "reference"
    code, total, err, start = flowdppo(
        ["train", "--out", str(ref), *sets], watch=ref / "config.yaml"
    )
    if code != 0:
        raise SystemExit(f"the reference run failed (exit {code}):\n{err}")
    assert start is not None
    horizon = (0.0, total if a.from_start else total - start)
    print(
        f"reference: {a.iters} iterations, config.yaml written after {start:.1f} s, done after "
        f"{total:.1f} s; kills drawn from 0-{horizon[1]:.1f} s after "
        + ("the start" if a.from_start else "config.yaml is written")
    )
    rng, trials = random.Random(a.seed), []
    for i in range(a.trials):
        run = tmp / f"trial_{i:03d}"
        if not a.from_start:  # the run's length now, on a machine whose load may have changed
            timing = tmp / "timing"
            _, total, _, start = flowdppo(
                ["train", "--out", str(timing), *sets], watch=timing / "config.yaml"
            )
            horizon = (0.0, total - (start or 0.0))
            shutil.rmtree(timing)
        rec = trial(sets, run, a.kills, horizon, rng, a.from_start)
        rec["kill_range_s"] = [round(x, 1) for x in horizon]
        rec["differences"] = differences(tmp / "reference", run, a.iters) if rec["resumed"] else []
        rec["identical"] = rec["resumed"] and not rec["differences"]
        trials.append(rec)
        kills = "; ".join(f"{k['delay_s']:.1f} s: {k['landed']}" for k in rec["kills"])
        print(
            f"trial {i} (kills within {horizon[1]:.1f} s): {kills} -> "
            f"identical={rec['identical']} corrupt={len(rec['corrupt'])}"
        )
        if rec.get("error") or rec["differences"]:
            print(rec.get("error") or f"  differs: {rec['differences']}")
    landings = Counter(k["landed"] for t in trials for k in t["kills"])
    summary = {
        "trials": len(trials),
        "kills": sum(not k["landed"].startswith("not killed") for t in trials for k in t["kills"]),
        "resumed": sum(t["resumed"] for t in trials),
        "identical": sum(t["identical"] for t in trials),
        "corrupt": sum(len(t["corrupt"]) for t in trials),
        "landed": dict(landings.most_common()),
        "kill_window_s": [
            min(t["kill_range_s"][1] for t in trials),
            max(t["kill_range_s"][1] for t in trials),
        ],
    }
    print(json.dumps(summary, indent=1))
    if a.json is not None:
        a.json.write_text(json.dumps({"summary": summary, "trials": trials}, indent=1))
    if a.keep:
        print(f"runs kept in {tmp}")
    else:
        shutil.rmtree(tmp)
    ok = summary["corrupt"] == 0 and summary["identical"] == summary["trials"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
