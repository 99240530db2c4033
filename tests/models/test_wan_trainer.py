"""Two iterations of the real ``Trainer`` on the tiny Wan pipeline, built from a config as a
user's video run is (``model.family: wan`` with frames, size and negative prompt; the video
rewards): the on-policy check holds, only LoRA weights change, the evaluation writes its samples
as an animated GIF of F frames."""

from __future__ import annotations

import pytest
import torch
from tiny_pipelines import MAX_SEQUENCE_LENGTH, WAN_HEIGHT, WAN_NUM_FRAMES, WAN_WIDTH

pytest.importorskip("flowdppo.trainer.trainer")


def _config(path, prompts_file, *extra: str):
    from flowdppo.config.load import load_config

    overrides = [
        "model.family=wan",
        f"model.pretrained={path}",
        f"model.height={WAN_HEIGHT}",
        f"model.width={WAN_WIDTH}",
        f"model.num_frames={WAN_NUM_FRAMES}",
        "model.negative_prompt=blurry static",
        f"model.max_sequence_length={MAX_SEQUENCE_LENGTH}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        "sampling.num_inference_steps=4",
        "sampling.train_pool=[0.0,0.5]",
        "sampling.train_steps=2",
        "sampling.prompts_per_iter=2",
        "sampling.group_size=2",
        "sampling.batch_size=4",
        "sampling.guidance_scale=2.0",
        "optim.micro_batch_size=4",
        "optim.lr=1e-3",
        f"data.train_prompts={prompts_file}",
        f"data.eval_prompts={prompts_file}",
        "eval.num_inference_steps=4",
        "eval.kl_samples=2",
        "rewards=[{name: video_frames, kwargs: {reward: jpeg_compressibility}}, "
        "{name: temporal_consistency, weight: 0.5, kwargs: {size: 8}}]",
        "train.kl_ref_every=1",
        *extra,
    ]
    return load_config(None, overrides)


def test_wan_trains_on_policy_and_writes_gif_samples(tiny_wan_path, tmp_path) -> None:
    import yaml
    from PIL import Image

    from flowdppo.models.wan import WanPolicy
    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    trainer = Trainer(_config(tiny_wan_path, prompts), tmp_path / "run")
    policy = trainer.policy
    assert isinstance(policy, WanPolicy) and policy.negative_prompt == "blurry static"
    assert policy.latent_shape == (4, 2, 2, 4)
    parts = ("transformer", "vae", "text_encoder")
    before = {
        f"{part}.{n}": p.detach().clone()
        for part in parts
        for n, p in getattr(policy.pipeline, part).named_parameters()
    }
    for _ in range(2):
        metrics = trainer.step()
        assert metrics["check/onpolicy_kl_max"] < 1e-10, metrics
        assert metrics["check/onpolicy_ratio_err_max"] < 1e-5, metrics
        assert -1 <= metrics["reward/temporal_consistency"] <= 1, sorted(metrics)
    changed = {
        f"{part}.{n}"
        for part in parts
        for n, p in getattr(policy.pipeline, part).named_parameters()
        if not torch.equal(before[f"{part}.{n}"], p)
    }
    assert changed and all(n.startswith("transformer.") and ".lora_" in n for n in changed)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["lora_target_modules"] == list(WanPolicy.default_lora_targets)

    evaluation = trainer.evaluate()
    assert -1 <= evaluation["eval/temporal_consistency"] <= 1
    gif = tmp_path / "run" / "samples" / "iter_000002.gif"
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == WAN_NUM_FRAMES
        assert im.info["duration"] == 60  # 16 fps in GIF's hundredths of a second


def test_two_expert_wan_trains_both_loras_on_policy(tiny_wan22_path, tmp_path) -> None:
    """Wan2.2 A14B layout (``transformer_2`` below ``boundary_ratio``), ``model.guidance_scale_2``:
    the on-policy check holds and only LoRA weights of the two experts change, both of them."""
    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    # Steps 0-2 trained: sigmas 1, 0.858 (high-noise expert) and 0.602 (low-noise, below 0.7).
    extra = (
        "model.guidance_scale_2=3.0",
        "sampling.train_pool=[0.0,0.75]",
        "sampling.train_steps=3",
    )
    cfg = _config(tiny_wan22_path, prompts, *extra)
    trainer = Trainer(cfg, tmp_path / "run")
    policy = trainer.policy
    assert policy.transformer_2 is not None and policy.guidance_scale_2 == 3.0
    parts = ("transformer", "transformer_2", "vae", "text_encoder")
    before = {
        f"{part}.{n}": p.detach().clone()
        for part in parts
        for n, p in getattr(policy.pipeline, part).named_parameters()
    }
    for _ in range(2):
        metrics = trainer.step()
        assert metrics["check/onpolicy_kl_max"] < 1e-10, metrics
        assert metrics["check/onpolicy_ratio_err_max"] < 1e-5, metrics
    changed = {
        name
        for part in parts
        for n, p in getattr(policy.pipeline, part).named_parameters()
        if not torch.equal(before[name := f"{part}.{n}"], p)
    }
    assert all(".lora_" in n for n in changed)
    assert {n.split(".")[0] for n in changed} == {"transformer", "transformer_2"}
