"""The shipped GPU recipes parse: run configs against the schema, accelerate configs with
accelerate's own loader, and the model section builds a policy's options (Wan: its video
options)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "sd35_medium_flowdppo.yaml": "sd3",
    "flux1_dev_flowdppo.yaml": "flux",
    "qwen_image_flowdppo.yaml": "qwen_image",
    "flux2_klein_flowdppo.yaml": "flux2_klein",
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_with_reference_hyper_parameters(name) -> None:
    load = pytest.importorskip("flowdppo.config.load")
    cfg = load.load_config(ROOT / "configs" / name)
    assert cfg.model.family == RECIPES[name]
    assert (cfg.model.lora_rank, cfg.model.lora_alpha) == (32, 64)
    assert cfg.sampling.num_inference_steps == 10 and cfg.model.resolution == 512
    assert cfg.optim.lr == 3e-4 and cfg.optim.updates_per_iter == 2
    assert cfg.loss.name == "flow_dppo" and cfg.loss.delta == 1e-5
    images = cfg.sampling.prompts_per_iter * cfg.sampling.group_size
    assert 768 <= images <= 1024


def test_wan_recipe_loads_with_valid_video_options() -> None:
    load = pytest.importorskip("flowdppo.config.load")
    from flowdppo.models.wan import WAN_NEGATIVE_PROMPT
    from flowdppo.trainer.build import _video_options

    cfg = load.load_config(ROOT / "configs" / "wan21_t2v_1.3b_flowdppo.yaml")
    m = cfg.model
    assert (m.family, m.pretrained) == ("wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert (m.num_frames - 1) % 4 == 0 and m.height % 16 == 0 and m.width % 16 == 0
    assert m.negative_prompt == WAN_NEGATIVE_PROMPT
    assert m.offload_text_encoders and m.gradient_checkpointing
    assert _video_options(m) == {"num_frames": 33, "resolution": (480, 832)}
    assert [r.name for r in cfg.rewards] == ["video_frames", "temporal_consistency"]
    assert cfg.sampling.guidance_scale == 5.0 and cfg.loss.delta == 1e-5


def test_wan22_a14b_recipe_sets_both_experts_guidance() -> None:
    load = pytest.importorskip("flowdppo.config.load")
    from flowdppo.trainer.build import _video_options

    cfg = load.load_config(ROOT / "configs" / "wan22_t2v_a14b_flowdppo.yaml")
    m = cfg.model
    assert (m.family, m.pretrained) == ("wan", "Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    assert not m.full_finetune and m.init_lora is None  # two experts: LoRA only
    assert _video_options(m) == {
        "num_frames": 33,
        "resolution": (480, 832),
        "guidance_scale_2": 3.0,
    }
    assert cfg.sampling.guidance_scale == cfg.eval.guidance_scale == 4.0


def test_video_options_are_validated() -> None:
    load = pytest.importorskip("flowdppo.config.load")
    wan = ["model.family=wan", "model.pretrained=x/y"]
    with pytest.raises(
        ValueError, match=r"model.num_frames: expected null \(an option of family wan"
    ):
        load.load_config(None, ["model.family=sd3", "model.num_frames=5"])
    with pytest.raises(ValueError, match=r"model\.height/width: expected both set or both null"):
        load.load_config(None, [*wan, "model.height=480"])
    with pytest.raises(ValueError, match=r"model\.num_frames: expected an int >= 1"):
        load.load_config(None, [*wan, "model.num_frames=0"])
    with pytest.raises(ValueError, match=r"model\.family"):
        load.load_config(None, ["model.family=wan2"])
    for bad in (["model.family=sd3", "model.pretrained=x/y"], wan):
        scale = "-1" if bad is wan else "3"
        with pytest.raises(
            ValueError, match=r"model\.guidance_scale_2: expected null, or a finite"
        ):
            load.load_config(None, [*bad, f"model.guidance_scale_2={scale}"])


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml"])
def test_accelerate_config_loads(name) -> None:
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    cfg = config_args.ClusterConfig.from_yaml_file(ROOT / "configs" / "accelerate" / name)
    assert cfg.num_processes >= 1 and str(cfg.mixed_precision) == "bf16"
