"""flowdppo against Flow-GRPO's own ``scripts/train_sd3.py`` on one tiny SD3 job, run in turn.

The job (docs/performance.md, "Against Flow-GRPO's own training script"): the tiny random SD3
pipeline of the tests (tests/models/tiny_pipelines.py, saved with CLIP at 77 positions because
Flow-GRPO pads CLIP prompts to 77 tokens) at 32², 10 Flow-SDE steps η 0.7, CFG 4.5, all 10
steps trained, 8 images per iteration in 2 forward batches of 4, 2 optimizer steps, LoRA
r32/α64 on the 8 attention projections, JPEG compressibility reward, β = 0, 1 thread.

flowdppo's side is ``flowdppo train benchmarks/vs_flow_grpo.yaml``; its iterations are timed
from its progress bar (wall to wall, as Flow-GRPO's) and from ``metrics.jsonl``
(``time/iter_s``; sampling = ``time/rollout_s`` + ``time/reward_wait_s``, training =
``time/train_s``). Flow-GRPO's side is its unmodified ``train_sd3.py`` run from a checkout with
a config file this script writes (their ``config/base.py`` with the job's values); its loop has
no end and logs no times, so its epochs are timed from its own progress bars ("Epoch N:
sampling" to "Epoch N.0: training" to "Epoch N+1: sampling") and it is stopped (SIGTERM) when
epoch ``--iters`` starts. Peak RSS from ``/usr/bin/time -v`` (GNU time; needed). Medians over
the iterations after ``--warmup``.

    .venv/bin/python benchmarks/vs_flow_grpo.py                 # flowdppo's side only
    .venv/bin/python benchmarks/vs_flow_grpo.py --flow-grpo CHECKOUT --flow-grpo-python PY \\
        --repeats 4                                             # both, alternating
    ... --set model.compile=true --warmup 5                     # flowdppo compiled

PY: a Python with Flow-GRPO's imports (torch, diffusers, transformers, peft, accelerate, absl-py,
ml-collections, wandb; run with ``WANDB_MODE=disabled``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = "a red cube\na blue sphere\na green cone\na white cat\n"
FLOW_GRPO_CONFIG = '''"""Flow-GRPO config of flowdppo's benchmarks/vs_flow_grpo.py (their config/base.py + the job)."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("base", os.path.join(os.getcwd(), "config", "base.py"))
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)


def get_config(name="tiny"):
    c = base.get_config()
    c.pretrained.model, c.dataset, c.logdir = "{dir}/tiny_sd3", "{dir}/flow_grpo_data", "{dir}/flow_grpo_logs"
    c.prompt_fn, c.reward_fn, c.mixed_precision, c.use_lora, c.resolution = (
        "general_ocr", {{"jpeg_compressibility": 1.0}}, "no", True, 32)
    c.sample.num_steps, c.sample.eval_num_steps, c.sample.guidance_scale, c.sample.noise_level = 10, 10, 4.5, 0.7
    c.sample.train_batch_size, c.sample.num_image_per_prompt, c.sample.num_batches_per_epoch = 4, 4, 2
    c.sample.test_batch_size, c.sample.global_std = 4, True
    c.train.batch_size, c.train.gradient_accumulation_steps, c.train.num_inner_epochs = 4, 1, 1
    c.train.timestep_fraction, c.train.beta, c.train.ema, c.train.cfg = 1.0, 0.0, False, True
    c.per_prompt_stat_tracking = True
    c.eval_freq = c.save_freq = 100000  # their loop evaluates at epoch 0 (epoch % eval_freq == 0)
    return c
'''


def build(folder: Path) -> None:
    """The tiny SD3 pipeline (CLIP at 77 positions), the prompt files and Flow-GRPO's config."""
    if not (folder / "tiny_sd3" / "model_index.json").exists():
        sys.path.insert(0, str(REPO / "tests" / "models"))
        import tiny_pipelines

        tiny_pipelines.CLIP_MAX_LENGTH = 77  # Flow-GRPO's encode_prompt pads CLIP prompts to 77
        tiny_pipelines.build_tiny_sd3(folder)
    (folder / "flow_grpo_data").mkdir(parents=True, exist_ok=True)
    for name in ("prompts.txt", "flow_grpo_data/train.txt", "flow_grpo_data/test.txt"):
        (folder / name).write_text(PROMPTS)
    (folder / "flow_grpo_tiny.py").write_text(FLOW_GRPO_CONFIG.format(dir=folder))


def _watch(cmd: list[str], cwd: Path, env: dict, pattern: bytes, log: Path, stop=None) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; the first arrival time of each ``pattern`` match's
    groups in its output; SIGTERM to the timed process once ``stop(marks)`` is true."""
    timev = log.with_suffix(".time")
    p = subprocess.Popen(
        ["/usr/bin/time", "-v", "-o", str(timev), *cmd],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    marks: dict[tuple, float] = {}
    tail, stopped = b"", False
    with open(log, "wb") as out:
        while chunk := p.stdout.read1(65536):
            now = time.perf_counter()
            out.write(chunk)
            tail += chunk
            for m in re.finditer(pattern, tail):
                marks.setdefault(m.groups(), now)
            tail = tail[-300:]  # a marker split across two reads is still found
            if stop is not None and not stopped and stop(marks):
                for pid in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split():
                    os.kill(int(pid), signal.SIGTERM)  # the timed process, not /usr/bin/time
                stopped = True
    p.wait()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timev.read_text())
    return {"marks": marks, "peak_rss_mib": int(rss.group(1)) / 1024 if rss else None}


def run_flowdppo(folder: Path, iters: int, tag: str, sets: list[str]) -> dict:
    run = folder / f"flowdppo_{tag}"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "flowdppo.cli",
        "train",
        str(REPO / "benchmarks" / "vs_flow_grpo.yaml"),
    ]
    cmd += [
        "--out",
        str(run),
        "--max-iters",
        str(iters),
        "--set",
        f"model.pretrained={folder}/tiny_sd3",
    ]
    cmd += [f"--set=data.{k}_prompts={folder}/prompts.txt" for k in ("train", "eval")]
    cmd += [f"--set={kv}" for kv in sets]
    env = {"PYTHONPATH": str(REPO)}
    w = _watch(cmd, folder, env, rb"train:.*?\| *(\d+)/\d+ \[", folder / f"flowdppo_{tag}.log")
    bar = {int(k[0]): t for k, t in w["marks"].items()}
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("kind") == "train":
            n = m["iter"]
            rows.append(
                {
                    "iter": n,
                    "iter_s": m["time/iter_s"],
                    "sampling_s": m["time/rollout_s"] + m["time/reward_wait_s"],
                    "training_s": m["time/train_s"],
                    "wall_s": bar[n] - bar[n - 1] if n in bar and n - 1 in bar else None,
                }
            )
    return {"rows": rows, "peak_rss_mib": w["peak_rss_mib"]}


def run_flow_grpo(folder: Path, checkout: Path, python: str, iters: int, tag: str) -> dict:
    cmd = [python, "scripts/train_sd3.py", "--config", f"{folder}/flow_grpo_tiny.py:tiny"]
    env = {"PYTHONPATH": str(checkout), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    w = _watch(
        cmd,
        checkout,
        env,
        rb"Epoch (\d+)(?:\.0)?: (sampling|training)",
        folder / f"flow_grpo_{tag}.log",
        stop=lambda marks: (str(iters).encode(), b"sampling") in marks,
    )
    t = {(int(n), kind.decode()): s for (n, kind), s in w["marks"].items()}
    rows = []
    for n in range(iters):  # their epoch n is iteration n + 1
        s, u, nxt = t.get((n, "sampling")), t.get((n, "training")), t.get((n + 1, "sampling"))
        if s and u and nxt:  # "sampling" includes text encoding, decoding, rewards, advantages
            rows.append(
                {
                    "iter": n + 1,
                    "iter_s": nxt - s,
                    "sampling_s": u - s,
                    "training_s": nxt - u,
                    "wall_s": nxt - s,
                }
            )
    return {"rows": rows, "peak_rss_mib": w["peak_rss_mib"]}


def summary(result: dict, warmup: int) -> dict:
    rows = [r for r in result["rows"] if r["iter"] > warmup]
    med = {k: statistics.median(r[k] for r in rows) for k in ("iter_s", "sampling_s", "training_s")}
    walls = [r["wall_s"] for r in rows if r.get("wall_s") is not None]
    med["wall_s"] = statistics.median(walls) if walls else med["iter_s"]
    return {**med, "iterations": len(rows), "peak_rss_mib": result["peak_rss_mib"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vs_flow_grpo"))
    ap.add_argument("--iters", type=int, default=45)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--flow-grpo", type=Path, help="a checkout of yifan123/flow_grpo")
    ap.add_argument("--flow-grpo-python", default=sys.executable)
    ap.add_argument("--json", type=Path, help="write every run's rows and medians here")
    ap.add_argument("--set", action="append", default=[], help="flowdppo config override KEY=VALUE")
    a = ap.parse_args(argv)
    a.dir = a.dir.resolve()
    build(a.dir)
    runs = []
    for r in range(1, a.repeats + 1):
        tools = (["flow_grpo"] if a.flow_grpo else []) + ["flowdppo"]
        for tool in tools:  # in turn, so that machine load falls on both alike
            load = Path("/proc/loadavg").read_text().split()[0]
            if tool == "flowdppo":
                res = run_flowdppo(a.dir, a.iters, str(r), a.set)
            else:
                res = run_flow_grpo(
                    a.dir, a.flow_grpo.resolve(), a.flow_grpo_python, a.iters, str(r)
                )
            s = summary(res, a.warmup)
            s.update(
                tool=tool,
                repeat=r,
                load_before=load,
                load_after=Path("/proc/loadavg").read_text().split()[0],
            )
            runs.append({**s, "rows": res["rows"]})
            own = f", its time/iter_s {s['iter_s']:.3f}" if tool == "flowdppo" else ""
            print(
                f"{tool} run {r}: {s['wall_s']:.3f} s/iter wall to wall (sampling "
                f"{s['sampling_s']:.3f}, training {s['training_s']:.3f}{own}) over "
                f"{s['iterations']} iterations, peak RSS {s['peak_rss_mib']:.0f} MiB, load "
                f"{s['load_before']} -> {s['load_after']}",
                flush=True,
            )
    if a.flow_grpo:
        pairs = zip(runs[1::2], runs[0::2], strict=True)  # (flowdppo, the Flow-GRPO run before it)
        ratios = sorted(f["wall_s"] / g["wall_s"] for f, g in pairs)
        print(
            f"flowdppo / Flow-GRPO wall s/iter: median {statistics.median(ratios):.2f} "
            f"(range {ratios[0]:.2f}-{ratios[-1]:.2f} over {len(ratios)} pairs)"
        )
    else:
        print(
            "Flow-GRPO's side: from a checkout of yifan123/flow_grpo, rerun with --flow-grpo "
            "CHECKOUT --flow-grpo-python PY; or by hand: cd CHECKOUT && WANDB_MODE=disabled "
            f"OMP_NUM_THREADS=1 PYTHONPATH=. PY scripts/train_sd3.py --config "
            f"{a.dir}/flow_grpo_tiny.py:tiny"
        )
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
