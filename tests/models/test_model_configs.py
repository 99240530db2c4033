"""The shipped GPU recipes parse: run configs against the schema, accelerate configs with
accelerate's own loader, and the model section builds a policy's options."""

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


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml"])
def test_accelerate_config_loads(name) -> None:
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    cfg = config_args.ClusterConfig.from_yaml_file(ROOT / "configs" / "accelerate" / name)
    assert cfg.num_processes >= 1 and str(cfg.mixed_precision) == "bf16"
