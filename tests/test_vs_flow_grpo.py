"""``benchmarks/vs_flow_grpo.py``: flowdppo's side is the documented job, Flow-GRPO's epochs are
timed from its progress markers and its endless loop is stopped, and the flowdppo-only run works
end to end on the tiny SD3 pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from benchmark_modules import BENCHMARKS, load_benchmark

from flowdppo.config import load_config

needs_time = pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs /usr/bin/time")

# Prints Flow-GRPO's tqdm markers (on stderr, with carriage returns) and never ends, like its loop.
FAKE_TRAIN = """import sys, time
n = 0
while True:
    sys.stderr.write(f"\\rEpoch {n}: sampling:   0%|          | 0/2"); sys.stderr.flush()
    time.sleep(0.1)
    sys.stderr.write(f"\\rEpoch {n}.0: training:   0%|          | 0/2"); sys.stderr.flush()
    time.sleep(0.15)
    n += 1
"""


def test_config_is_the_documented_job():
    cfg = load_config(str(BENCHMARKS / "vs_flow_grpo.yaml"), [])
    s, o = cfg.sampling, cfg.optim
    assert (s.num_inference_steps, s.eta, s.guidance_scale) == (10, 0.7, 4.5)
    assert s.prompts_per_iter * s.group_size == 8 and s.batch_size == 4
    assert s.train_steps == 10 and tuple(s.train_pool) == (0.0, 1.0)  # every step trained
    assert (o.updates_per_iter, o.micro_batch_size) == (2, 4)
    assert (cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.max_sequence_length) == (
        32,
        64,
        128,
    )
    assert cfg.loss.beta == 0.0 and cfg.train.kl_ref_every == 0
    assert [r.name for r in cfg.rewards] == ["jpeg_compressibility"]


@needs_time
def test_flow_grpo_epochs_timed_from_markers_and_stopped(tmp_path):
    bench = load_benchmark("vs_flow_grpo")
    checkout = tmp_path / "flow_grpo"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "train_sd3.py").write_text(FAKE_TRAIN)
    res = bench.run_flow_grpo(tmp_path, checkout, sys.executable, iters=4, tag="t")
    assert [r["iter"] for r in res["rows"]] == [1, 2, 3, 4]
    for r in res["rows"]:
        assert r["sampling_s"] > 0.05 and r["training_s"] > 0.1  # reader jitter < 50 ms
        assert r["iter_s"] == pytest.approx(r["sampling_s"] + r["training_s"])
    assert res["peak_rss_mib"] > 0
    med = bench.summary(res, warmup=1)
    assert med["iterations"] == 3 and med["wall_s"] == med["iter_s"]


@needs_time
def test_flowdppo_side_runs(tmp_path, capsys):
    bench = load_benchmark("vs_flow_grpo")
    out = tmp_path / "vs"
    assert bench.main(["--dir", str(out), "--iters", "3", "--warmup", "1"]) == 0
    text = capsys.readouterr().out
    assert "flowdppo run 1: " in text and "over 2 iterations" in text
    assert "--flow-grpo CHECKOUT" in text  # how to run Flow-GRPO's side
    compile((out / "flow_grpo_tiny.py").read_text(), "flow_grpo_tiny.py", "exec")
    assert (out / "flow_grpo_data" / "train.txt").read_text().count("\n") == 4
