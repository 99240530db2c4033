"""``flowdppo train`` / ``sample`` / ``export`` on the tiny Wan pipeline through the real CLI: a
video run samples to an animated GIF of F frames, and its exported LoRA loads into a plain
``WanPipeline``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import PROMPTS
from tiny_pipelines import MAX_SEQUENCE_LENGTH, WAN_HEIGHT, WAN_NUM_FRAMES, WAN_WIDTH


def _flowdppo(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flowdppo.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_wan_train_sample_export_cli(tiny_wan_path, tmp_path) -> None:
    from diffusers import WanPipeline
    from PIL import Image

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run, out = tmp_path / "run", tmp_path / "lora"
    sets = [
        "model.family=wan",
        f"model.pretrained={tiny_wan_path}",
        f"model.height={WAN_HEIGHT}",
        f"model.width={WAN_WIDTH}",
        f"model.num_frames={WAN_NUM_FRAMES}",
        f"model.max_sequence_length={MAX_SEQUENCE_LENGTH}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        "sampling.num_inference_steps=4",
        "sampling.train_pool=[0.0, 0.5]",
        "sampling.train_steps=2",
        "sampling.prompts_per_iter=2",
        "sampling.group_size=2",
        "sampling.guidance_scale=2.0",
        f"data.train_prompts={prompts}",
        f"data.eval_prompts={prompts}",
        "rewards=[{name: temporal_consistency, kwargs: {size: 4}}]",
        "eval.every=0",
        "eval.per_category=2",
        "eval.num_inference_steps=4",
        "eval.kl_samples=0",
        "train.threads=1",
    ]
    res = _flowdppo(
        "train", "--out", str(run), "--max-iters", "2", *[a for s in sets for a in ("--set", s)]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.suffix for p in (run / "samples").iterdir()) == [".gif"]
    res = _flowdppo(
        "sample",
        "--run",
        str(run),
        "--prompt",
        "a red circle",
        "--n",
        "2",
        "--out",
        str(tmp_path / "s.png"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    with Image.open(tmp_path / "s.gif") as im:
        assert im.n_frames == WAN_NUM_FRAMES
    res = _flowdppo("export", "--run", str(run), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    pipe = WanPipeline.from_pretrained(tiny_wan_path)
    pipe.load_lora_weights(out)  # the exported keys fit the pipeline's transformer
    assert any(".lora_B" in n for n, _ in pipe.transformer.named_parameters())
