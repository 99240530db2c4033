"""Faults in a two-process run (torchrun, gloo, CPU), through the command line on every process
(``dist_fault.py``): a process that raises brings the run down on all processes, none hangs, and
the others say so in one line; a process that hangs is reported after train.collective_timeout_s; a
checkpoint write failing on process 0 stops every process with the same one line; a run resumed
with another number of processes continues it (equal up to float32 summation order).

Slow (a torchrun start and gloo rendezvous per run: ~30 s each on a loaded 2-core CPU).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .test_distributed import _free_port
from .tiny import read_lines, tiny_overrides, without_time

SCRIPT = Path(__file__).with_name("dist_fault.py")
SETTINGS = [
    "rewards=[{name: test_red}]",
    "sampling.prompts_per_iter=3",
    "sampling.group_size=4",
    "sampling.batch_size=6",  # one forward batch per process and iteration
    "optim.updates_per_iter=4",
    "optim.micro_batch_size=1",
    "optim.lr=1e-3",
    "train.max_iters=3",
    "eval.every=0",
]
HANG_S = 120  # a run whose processes have not all exited by then is hung
WORKER_TRACEBACK = re.compile(r"\[rank\d+\]: Traceback")  # a process's, as torchrun relays it

pytestmark = pytest.mark.slow


def _flowdppo(fault: str, nproc: int, *args: str) -> tuple[int, float, str]:
    """``flowdppo ARGS`` on ``nproc`` processes with ``fault`` arranged: (exit code, seconds, output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(SCRIPT), fault, "flowdppo", *args]
    if nproc > 1:
        run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd = [*run, "--master_port", str(_free_port()), *cmd[1:]]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_S)
    return proc.returncode, time.monotonic() - t0, proc.stdout + proc.stderr


def _sets(ckpt: Path) -> list[str]:
    return [a for s in tiny_overrides(ckpt, *SETTINGS) for a in ("--set", s)]


def test_a_process_that_raises_brings_every_process_down(tiny_ckpt, tmp_path) -> None:
    """The reward raises on process 1 in iteration 2, while process 0 waits for its rewards in
    the gather: process 1 prints its one line and exits 1, and torchrun stops process 0."""
    out = tmp_path / "run"
    code, seconds, log = _flowdppo("reward_rank1", 2, "train", "--out", str(out), *_sets(tiny_ckpt))
    assert code != 0, log
    assert "error: reward 'test_red' raised RuntimeError: the judge crashed on process 1" in log
    line = "error: process 0 of 2: a collective failed: another process of the run stopped"
    assert line in log, log[-3000:]  # process 0, in the gather: one line, not gloo's traceback
    assert not WORKER_TRACEBACK.search(log), log[-3000:]
    assert [r["iter"] for r in read_lines(out)] == [1]
    assert (out / "checkpoints" / "latest").read_text() == "iter_000001"
    print(f"all processes down {seconds:.1f} s after the start")


def test_a_hung_process_stops_the_others_after_the_collective_timeout(tiny_ckpt, tmp_path):
    """The reward hangs on process 1 in iteration 2: process 0 waits in the gather for
    train.collective_timeout_s (15 s here), then stops with one line naming the wait."""
    out = tmp_path / "run"
    sets = [*_sets(tiny_ckpt), "--set", "train.collective_timeout_s=15"]
    code, seconds, log = _flowdppo("hang_rank1", 2, "train", "--out", str(out), *sets)
    assert code != 0, log
    line = "error: process 0 of 2: a collective failed: another process did not answer within"
    assert f"{line} train.collective_timeout_s" in log, log[-3000:]
    assert not WORKER_TRACEBACK.search(log), log[-3000:]  # torchrun prints its own
    assert [r["iter"] for r in read_lines(out)] == [1]
    assert (out / "checkpoints" / "latest").read_text() == "iter_000001"
    print(f"all processes down {seconds:.1f} s after the start")


def test_a_failed_checkpoint_write_on_process_0_stops_every_process(tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "run"
    code, _, log = _flowdppo("disk_rank0", 2, "train", "--out", str(out), *_sets(tiny_ckpt))
    assert code != 0, log
    line = f"error: writing the checkpoint of iteration 2 to {out / 'checkpoints'} failed:"
    assert f"{line} No space left on device; iter_000001 is intact" in log  # process 0
    assert f"{line} on process 0;" in log  # process 1: the same stop, no hang at a barrier
    assert (out / "checkpoints" / "latest").read_text() == "iter_000001"


def test_a_run_resumes_with_another_number_of_processes(tiny_ckpt, tmp_path) -> None:
    """2 processes for iteration 1, then 1 process resuming to 3 ≡ 1 process for 3 iterations:
    the samples, their noise and the global batch are functions of (seed, iteration, sample), not
    of the process count; the gradients are summed in another order (≈1e-7 per step)."""
    one, mixed = tmp_path / "one", tmp_path / "mixed"
    sets = _sets(tiny_ckpt)
    assert _flowdppo("none", 1, "train", "--out", str(one), *sets)[0] == 0
    code, _, log = _flowdppo("none", 2, "train", "--out", str(mixed), *sets, "--max-iters", "1")
    assert code == 0, log
    code, _, log = _flowdppo("none", 1, "resume", str(mixed))
    assert code == 0, log
    a, b = without_time(read_lines(one)), without_time(read_lines(mixed))
    assert [r["iter"] for r in b] == [1, 2, 3]
    assert abs(a[-1]["reward/mean"] - b[-1]["reward/mean"]) <= 1e-5
    wa = load_file(one / "checkpoints" / "iter_000003" / "trainable.safetensors")
    wb = load_file(mixed / "checkpoints" / "iter_000003" / "trainable.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5
