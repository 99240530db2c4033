"""``benchmarks/gpu_throughput.py``: skipped without CUDA, and its ``--tiny`` configs of the same
model classes run the whole measuring path on the CPU, writing the table as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from benchmark_modules import BENCHMARKS, load_benchmark

ROOT = BENCHMARKS.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device runs the full benchmark")
def test_without_cuda_it_prints_one_line_and_exits_0(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert load_benchmark("gpu_throughput").main([]) == 0
    assert capsys.readouterr().out.startswith("no CUDA device: skipped")
    assert not list(tmp_path.iterdir())


def test_tiny_diffusers_cases_measure_rollout_and_update(tmp_path, capsys) -> None:
    """SD3.5-M LoRA and full fine-tuning and FLUX LoRA at tiny sizes: every figure positive,
    the trained steps K = T - 1, the JSON and the markdown table written."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    bench = load_benchmark("gpu_throughput")
    path = tmp_path / "out.json"
    cases = "sd35m_lora,sd35m_full,flux_lora"
    assert bench.main(["--tiny", "--cases", cases, "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["tiny"] is True and data["env"]["torch"] == torch.__version__
    rows = {r["case"]: r for r in data["rows"]}
    assert list(rows) == cases.split(",")
    for r in rows.values():
        assert "error" not in r, r
        assert r["rollout_img_s"] > 0 and r["update_pairs_s"] > 0 and r["update_img_s"] > 0
        assert r["trained_steps_k"] == r["steps"] - 1 == 3
    assert rows["sd35m_lora"]["cfg_passes"] == 2 and rows["flux_lora"]["cfg_passes"] == 1
    # LoRA trains its adapters (r32: at tiny widths as many weights as the model's); full
    # fine-tuning every weight of the transformer
    lora = rows["sd35m_lora"]
    assert 0 < lora["params_trainable"] != lora["params_total"]
    assert rows["sd35m_full"]["params_trainable"] == rows["sd35m_full"]["params_total"]
    assert "| sd35m_full |" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_run_of_every_case_in_a_subprocess(tmp_path) -> None:
    """The command line as on the GPU machine, all cases (Shapes with real Trainer steps)."""
    pytest.importorskip("diffusers")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_throughput.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["shapes", "sd35m_lora", "sd35m_full", "flux_lora"]
    assert rows[0]["trainer_iter_s"] > 0 and all("error" not in r for r in rows)
