"""``flowdppo train`` on a tiny SD3 pipeline, then ``flowdppo export``: the LoRA that a plain
diffusers pipeline loads reproduces the trained policy's images (the run's latest checkpoint)."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import NUM_STEPS, PROMPTS, ode_images
from tiny_pipelines import MAX_SEQUENCE_LENGTH, RESOLUTION


def _flowdppo(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flowdppo.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def test_train_then_export_cli_round_trips_through_load_lora_weights(
    tiny_sd3_path, tmp_path
) -> None:
    from diffusers import StableDiffusion3Pipeline

    from flowdppo.runs import load_run_policy

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run, out = tmp_path / "run", tmp_path / "lora"
    sets = [
        "model.family=sd3",
        f"model.pretrained={tiny_sd3_path}",
        f"model.resolution={RESOLUTION}",
        "model.lora_rank=4",
        f"model.max_sequence_length={MAX_SEQUENCE_LENGTH}",
        "model.lora_alpha=8",
        "sampling.num_inference_steps=4",
        "sampling.train_pool=[0.0, 0.5]",
        "sampling.train_steps=2",
        "sampling.prompts_per_iter=2",
        "sampling.group_size=2",
        "sampling.guidance_scale=1.0",
        "optim.lr=1e-2",
        f"data.train_prompts={prompts}",
        f"data.eval_prompts={prompts}",
        "rewards=[{name: jpeg_compressibility}]",
        "eval.every=0",
        "eval.per_category=2",
        f"eval.num_inference_steps={NUM_STEPS}",
        "train.threads=1",
    ]
    res = _flowdppo(
        "train", "--out", str(run), "--max-iters", "2", *[a for s in sets for a in ("--set", s)]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = _flowdppo("export", "--run", str(run), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]

    policy, _, it = load_run_policy(run, device="cpu")
    assert it == 2
    latents = policy.initial_noise(2, torch.Generator().manual_seed(7))
    ours = ode_images(policy, latents, 1.0)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path)
    pipe.load_lora_weights(out)
    theirs = pipe(
        PROMPTS,
        height=RESOLUTION,
        width=RESOLUTION,
        num_inference_steps=NUM_STEPS,
        guidance_scale=1.0,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        latents=latents.clone(),
        output_type="pt",
    ).images
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)


def test_export_refuses_a_shapes_run(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text("model: {family: shapes}\n")
    res = _flowdppo("export", "--run", str(tmp_path), "--out", str(tmp_path / "x"))
    assert res.returncode != 0 and "diffusers" in res.stderr
