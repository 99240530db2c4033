"""``flowdppo export`` of a LoRA run without the pipeline, and ``model.init_lora``: a new run
started from the exported file samples exactly the exported LoRA's images."""

from __future__ import annotations

import pytest
import torch
from conftest import ode_images, perturb_lora
from tiny_pipelines import MAX_SEQUENCE_LENGTH, RESOLUTION

from flowdppo.models.export import export_lora
from flowdppo.models.init_lora import WEIGHT_NAME, init_lora

pytest.importorskip("flowdppo.trainer.trainer")


def _config(family, prompts_file, *extra: str):
    from flowdppo.config.load import load_config

    overrides = [
        f"model.family={family.name}",
        f"model.pretrained={family.path}",
        f"model.resolution={RESOLUTION}",
        f"model.max_sequence_length={MAX_SEQUENCE_LENGTH}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        "sampling.num_inference_steps=4",
        "sampling.train_pool=[0.0,0.5]",
        "sampling.prompts_per_iter=2",
        "sampling.group_size=2",
        f"sampling.guidance_scale={family.guidance_scale}",
        f"data.train_prompts={prompts_file}",
        f"data.eval_prompts={prompts_file}",
        "rewards=[{name: jpeg_compressibility}]",
        *extra,
    ]
    return load_config(None, overrides)


def test_export_skips_the_pipeline_and_init_lora_restarts_from_it(family, tmp_path, monkeypatch):
    from flowdppo import cli
    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    trainer = Trainer(_config(family, prompts), tmp_path / "run")
    perturb_lora(trainer.policy)  # as training would move it
    trainer.save()
    trained = trainer.policy
    latents = trained.initial_noise(2, torch.Generator().manual_seed(8))
    images = ode_images(trained, latents, family.guidance_scale)
    with trained.reference():
        base = ode_images(trained, latents, family.guidance_scale)

    def no_pipeline(*_args, **_kwargs):
        raise AssertionError("export built the pipeline")

    with monkeypatch.context() as patch:
        patch.setattr(family.pipeline_cls, "from_pretrained", no_pipeline)
        patch.setattr(family.policy_cls, "from_pretrained", no_pipeline)
        assert (
            cli.main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "x")]) == 0
        )
    pipe = family.pipeline()
    pipe.load_lora_weights(tmp_path / "x")
    exported = family.pipeline_images(pipe, latents, family.guidance_scale)
    torch.testing.assert_close(exported, images, rtol=0, atol=2e-5)

    # A new run from the exported file, at another alpha (B is rescaled to the same update).
    cfg = _config(family, prompts, f"model.init_lora={tmp_path / 'x'}", "model.lora_alpha=2")
    started = Trainer(cfg, tmp_path / "run2").policy
    first = ode_images(started, latents, family.guidance_scale)
    torch.testing.assert_close(first, exported, rtol=0, atol=2e-5)
    assert (first - base).abs().max() > 1e-3
    with started.reference():  # the reference stays the base model
        torch.testing.assert_close(
            ode_images(started, latents, family.guidance_scale), base, rtol=0, atol=1e-6
        )


def test_a_file_without_metadata_loads_as_diffusers_does(tiny_sd3_path, tmp_path) -> None:
    """No rank/alpha metadata: diffusers applies B·A unscaled (alpha = rank); so do we."""
    from diffusers import StableDiffusion3Pipeline

    from flowdppo.models.lora import lora_state_dict
    from flowdppo.models.sd3 import SD3Policy

    kw = {"resolution": RESOLUTION, "max_sequence_length": MAX_SEQUENCE_LENGTH, "lora_rank": 4}
    source = SD3Policy.from_pretrained(tiny_sd3_path, lora_alpha=8, **kw)
    perturb_lora(source)
    bare = {k.replace(".default.", "."): v for k, v in lora_state_dict(source.transformer).items()}
    StableDiffusion3Pipeline.save_lora_weights(tmp_path / "bare", transformer_lora_layers=bare)
    file = tmp_path / "bare" / WEIGHT_NAME
    policy = SD3Policy.from_pretrained(tiny_sd3_path, lora_alpha=8, **kw)
    assert init_lora(policy, file) == len(bare) // 2
    latents = policy.initial_noise(2, torch.Generator().manual_seed(9))
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path)
    pipe.load_lora_weights(tmp_path / "bare")
    from conftest import Family

    fam = Family("sd3", SD3Policy, StableDiffusion3Pipeline, tiny_sd3_path, 1.0)
    theirs = fam.pipeline_images(pipe, latents, 1.0)
    torch.testing.assert_close(ode_images(policy, latents, 1.0), theirs, rtol=0, atol=2e-5)
    assert (ode_images(source, latents, 1.0) - theirs).abs().max() > 1e-3  # alpha/rank = 2 ≠ 1


def test_bad_init_lora_files_are_named_with_what_was_expected(tiny_sd3_path, tmp_path) -> None:
    from safetensors.torch import save_file

    from flowdppo.models.sd3 import SD3Policy

    kw = {"resolution": RESOLUTION, "max_sequence_length": MAX_SEQUENCE_LENGTH, "lora_rank": 4}
    source = SD3Policy.from_pretrained(tiny_sd3_path, **kw)
    out = export_lora(source, tmp_path / "lora")
    policy = SD3Policy.from_pretrained(tiny_sd3_path, **kw)
    with pytest.raises(FileNotFoundError, match=r"missing does not exist; expected a diffusers"):
        init_lora(policy, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no pytorch_lora_weights.safetensors"):
        init_lora(policy, tmp_path / "empty")
    (tmp_path / "lora.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"lora.bin is not a .safetensors file"):
        init_lora(policy, tmp_path / "lora.bin")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"junk.safetensors is not a LoRA that"):
        init_lora(policy, tmp_path / "junk.safetensors")
    wider = SD3Policy.from_pretrained(tiny_sd3_path, **{**kw, "lora_rank": 2})
    with pytest.raises(ValueError, match=r"has rank 4 .* set model.lora_rank: 4"):
        init_lora(wider, out)
    fewer = SD3Policy.from_pretrained(tiny_sd3_path, lora_target_modules=["to_q"], **kw)
    with pytest.raises(ValueError, match=r"no LoRA on .*lora_target_modules.*'to_add_out'"):
        init_lora(fewer, out)
    # The other way round is fine: modules the file lacks keep their zero update.
    more = SD3Policy.from_pretrained(tiny_sd3_path, lora_target_modules=["to_q"], **kw)
    smaller = export_lora(more, tmp_path / "to_q_only")
    target = SD3Policy.from_pretrained(tiny_sd3_path, **kw)
    assert init_lora(target, smaller) == len(target.transformer.transformer_blocks)  # to_q each
    save_file({"text_encoder.x.lora_A.weight": torch.zeros(4, 8)}, str(tmp_path / "te.safetensors"))
    with pytest.raises(ValueError, match=r"text-encoder LoRAs are not supported"):
        init_lora(policy, tmp_path / "te.safetensors")
    full = SD3Policy.from_pretrained(tiny_sd3_path, full_finetune=True, **kw)
    with pytest.raises(ValueError, match="no LoRA"):
        init_lora(full, out)


@pytest.mark.parametrize(("name", "tokens"), [("qwen_image", 32), ("flux2_klein", 24)])
def test_init_lora_reproduces_an_exported_lora_on_the_other_families(
    name, tokens, request, tmp_path
) -> None:
    import importlib

    from conftest import PROMPTS

    from flowdppo.trainer.build import DIFFUSERS_POLICIES

    module, cls_name = DIFFUSERS_POLICIES[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    path = request.getfixturevalue(f"tiny_{name}_path")
    kw = {"resolution": RESOLUTION, "max_sequence_length": tokens, "lora_rank": 4}
    source = cls.from_pretrained(path, lora_alpha=8, **kw)
    perturb_lora(source)
    target = cls.from_pretrained(path, lora_alpha=2, **kw)
    init_lora(target, export_lora(source, tmp_path / "lora"))
    cond = source.encode_prompts(PROMPTS)
    x = source.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.6)
    ours = target.velocity(x, sigma, cond, 2.5)
    torch.testing.assert_close(ours, source.velocity(x, sigma, cond, 2.5), rtol=0, atol=1e-5)
    with target.reference():
        assert (target.velocity(x, sigma, cond, 2.5) - ours).abs().max() > 1e-3
