"""Two iterations of the real ``flowdppo.trainer.Trainer`` on the tiny SD3 and FLUX pipelines.

Built from a config exactly as a user's run would be (``model.pretrained`` = the pipeline
folder). Checks: only LoRA weights of the transformer change (text encoders, VAE and base
weights untouched) and the trainer's on-policy check holds (KL 0, ρ 1 before the first update).
"""

from __future__ import annotations

import pytest
import torch
from tiny_pipelines import MAX_SEQUENCE_LENGTH, RESOLUTION

pytest.importorskip("flowdppo.trainer.trainer")


def _config(family, prompts_file, *extra: str):
    from flowdppo.config.load import load_config

    overrides = [
        f"model.family={family.name}",
        f"model.pretrained={family.path}",
        f"model.resolution={RESOLUTION}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        "sampling.num_inference_steps=4",
        "sampling.train_pool=[0.0,0.5]",
        "sampling.train_steps=2",
        "sampling.prompts_per_iter=2",
        "sampling.group_size=2",
        "sampling.batch_size=4",
        f"sampling.guidance_scale={family.guidance_scale}",
        "optim.micro_batch_size=4",
        "optim.lr=1e-3",
        f"data.train_prompts={prompts_file}",
        f"data.eval_prompts={prompts_file}",
        "rewards=[{name: jpeg_compressibility}]",
        "train.kl_ref_every=1",  # kl/ref_mean on every iteration (the default skips some)
        *extra,
    ]
    return load_config(None, overrides)


def _weights(policy) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(policy.pipeline, part, None)
        if module is not None:
            out |= {f"{part}.{n}": p.detach().clone() for n, p in module.named_parameters()}
    return out


def test_trainer_runs_two_iterations_on_policy_and_trains_only_lora(family, tmp_path) -> None:
    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    trainer = Trainer(_config(family, prompts), tmp_path / "run")
    assert trainer.policy.max_sequence_length >= MAX_SEQUENCE_LENGTH
    before = _weights(trainer.policy)
    for _ in range(2):
        metrics = trainer.step()
        assert metrics["check/onpolicy_kl_max"] < 1e-10, metrics
        assert metrics["check/onpolicy_ratio_err_max"] < 1e-5, metrics
    after = _weights(trainer.policy)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and any(".lora_B." in n for n in changed)
    assert all(n.startswith("transformer.") and ".lora_" in n for n in changed), sorted(changed)
    # The default LoRA targets (to_add_out among them) are written into the run's config, so a
    # later change of the default cannot change what a resume or an export expects.
    import yaml

    from flowdppo.models._diffusers_common import DEFAULT_LORA_TARGETS

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["lora_target_modules"] == DEFAULT_LORA_TARGETS
    assert "to_add_out" in DEFAULT_LORA_TARGETS
    if family.name == "sd3":  # FLUX's single blocks have none; its double blocks do
        assert any(".to_add_out.lora_B." in n for n in changed)


def test_compiled_transformer_trains_on_policy(family, tmp_path) -> None:
    """``model.compile`` on a diffusers policy: the transformer is compiled in place (peft's
    LoRA layers inside it, the reference = the adapter disabled) and the on-policy check holds."""
    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    trainer = Trainer(_config(family, prompts, "model.compile=true"), tmp_path / "run")
    assert trainer.policy.transformer._compiled_call_impl is not None
    for _ in range(2):
        metrics = trainer.step()
        assert metrics["check/onpolicy_kl_max"] < 1e-10, metrics
    assert metrics["kl/ref_mean"] > 0.0  # the reference (adapter off) differs from the policy
