"""WanPolicy on a tiny two-expert WanPipeline (Wan2.2-T2V-A14B layout: ``transformer`` for
timesteps >= ``boundary_ratio`` · 1000, ``transformer_2`` below): frames equal
``WanPipeline.__call__``'s with ``guidance_scale_2``, the expert switch at the pipeline's step, a
batch mixing both experts row by row, both LoRAs trained, saved and disabled for the reference."""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_STEPS, PROMPTS, ode_images, perturb_lora
from tiny_pipelines import MAX_SEQUENCE_LENGTH, WAN_HEIGHT, WAN_NUM_FRAMES, WAN_WIDTH


def _policy(source, **kwargs):
    from flowdppo.models.wan import WanPolicy

    options = {
        "device": "cpu",
        "resolution": (WAN_HEIGHT, WAN_WIDTH),
        "num_frames": WAN_NUM_FRAMES,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "lora_rank": 4,
        "lora_alpha": 8,
        **kwargs,
    }
    return WanPolicy.from_pretrained(source, **options)


def _pipeline_frames(pipe, latents, guidance_scale, guidance_scale_2=None):
    return pipe(
        PROMPTS,
        height=WAN_HEIGHT,
        width=WAN_WIDTH,
        num_frames=WAN_NUM_FRAMES,
        num_inference_steps=NUM_STEPS,
        guidance_scale=guidance_scale,
        guidance_scale_2=guidance_scale_2,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        latents=latents.clone(),
        output_type="pt",
    ).frames


def _record_experts(high: torch.nn.Module, low: torch.nn.Module, calls: list[str]) -> list:
    return [
        net.register_forward_pre_hook(lambda *_, name=name: calls.append(name))
        for net, name in ((high, "high"), (low, "low"))
    ]


@pytest.mark.parametrize(
    ("guidance", "guidance_2"),
    [(1.0, None), (2.0, None), (2.0, 4.0)],
    ids=["no_cfg", "cfg_same_scale", "cfg_guidance_scale_2"],
)
def test_ode_frames_equal_the_two_expert_pipeline(tiny_wan22_path, guidance, guidance_2) -> None:
    from diffusers import WanPipeline

    policy = _policy(tiny_wan22_path, guidance_scale_2=guidance_2)
    pipe = WanPipeline.from_pretrained(tiny_wan22_path)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    ours = ode_images(policy, latents, guidance)
    theirs = _pipeline_frames(pipe, latents, guidance, guidance_2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    # The low-noise expert matters: the same policy with its experts swapped draws other frames.
    policy.transformer, policy.transformer_2 = policy.transformer_2, policy.transformer
    assert (ode_images(policy, latents, guidance) - theirs).abs().max() > 1e-3


def test_expert_switch_at_the_pipelines_step(tiny_wan22_path) -> None:
    """Without CFG each step is one transformer call: the sequence of experts is the pipeline's,
    and both experts run (the boundary falls inside the schedule)."""
    from diffusers import WanPipeline

    policy = _policy(tiny_wan22_path)
    pipe = WanPipeline.from_pretrained(tiny_wan22_path)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(0))
    ours: list[str] = []
    theirs: list[str] = []
    hooks = _record_experts(policy.transformer, policy.transformer_2, ours)
    hooks += _record_experts(pipe.transformer, pipe.transformer_2, theirs)
    ode_images(policy, latents, 1.0)
    _pipeline_frames(pipe, latents, 1.0)
    for hook in hooks:
        hook.remove()
    # The scheduler's sigmas for 4 steps: 1, 0.858, 0.602, 0.009 -> timesteps >= 700 at the
    # first two steps.
    sigmas = policy.sigmas(NUM_STEPS)[:-1]
    torch.testing.assert_close(
        sigmas, torch.tensor([1.0, 0.8577, 0.6022, 0.0089]), atol=1e-4, rtol=0
    )
    expected = ["high" if 1000 * s >= 700 else "low" for s in sigmas.tolist()]
    assert expected == ["high", "high", "low", "low"]
    assert ours == theirs == expected


def test_batch_mixing_experts_equals_rows_alone(tiny_wan22_path) -> None:
    policy = _policy(tiny_wan22_path, guidance_scale_2=3.0)
    perturb_lora(policy)
    cond = policy.encode_prompts(PROMPTS)
    x = policy.initial_noise(2, torch.Generator().manual_seed(5))
    sigma = torch.tensor([0.85, 0.4])  # row 0: high-noise expert, row 1: low-noise
    mixed = policy.velocity(x, sigma, cond, 2.0)
    for row in range(2):
        one = {k: v[row : row + 1] for k, v in cond.items()}
        alone = policy.velocity(x[row : row + 1], sigma[row : row + 1], one, 2.0)
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=1e-5, atol=1e-6)
    # Row 1 uses guidance_scale_2 = 3 on transformer_2: CFG by hand on the low-noise expert.
    v_cond = policy.velocity(x[1:], sigma[1:], {k: v[1:] for k, v in cond.items()}, 1.0)
    empty = policy.encode_prompts([""])
    v_neg = policy.velocity(x[1:], sigma[1:], empty, 1.0)
    torch.testing.assert_close(mixed[1:], v_neg + 3.0 * (v_cond - v_neg), rtol=1e-5, atol=1e-6)


def test_both_loras_train_save_and_disable_for_the_reference(tiny_wan22_path) -> None:
    policy = _policy(tiny_wan22_path)
    cond = policy.encode_prompts(PROMPTS)
    x = policy.initial_noise(2, torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.95, 0.4])
    base = policy.velocity(x, sigma, cond, 2.0)
    params = list(policy.trainable_parameters())
    high = [p for p in policy.transformer.parameters() if p.requires_grad]
    low = [p for p in policy.transformer_2.parameters() if p.requires_grad]
    assert high and low and len(params) == len(high) + len(low)
    perturb_lora(policy)
    trained = policy.velocity(x, sigma, cond, 2.0)
    assert ((trained - base).flatten(1).abs().amax(1) > 1e-4).all()  # both rows moved
    with policy.reference():
        torch.testing.assert_close(policy.velocity(x, sigma, cond, 2.0), base, rtol=0, atol=0)
    state = policy.trainable_state_dict()
    assert len(state) == len(params)
    assert sum(k.startswith("transformer_2.") for k in state) == len(low)
    fresh = _policy(tiny_wan22_path)
    fresh.load_trainable_state_dict(state)
    torch.testing.assert_close(fresh.velocity(x, sigma, cond, 2.0), trained, rtol=0, atol=0)


def test_two_expert_errors(tiny_wan22_path, tiny_wan_path, tmp_path) -> None:
    from diffusers import WanPipeline

    with pytest.raises(ValueError, match="full fine-tuning of a two-expert"):
        _policy(tiny_wan22_path, full_finetune=True)
    with pytest.raises(ValueError, match=r"guidance_scale_2 4\.0 needs a two-expert"):
        _policy(tiny_wan_path, guidance_scale_2=4.0)
    pipe = WanPipeline.from_pretrained(tiny_wan22_path)
    pipe.register_to_config(boundary_ratio=None)
    with pytest.raises(ValueError, match="boundary_ratio is None"):
        _policy(pipe)
    from flowdppo.models.init_lora import init_lora

    with pytest.raises(ValueError, match="init_lora: not supported for a two-expert"):
        init_lora(_policy(tiny_wan22_path), tmp_path)
    one = _policy(tiny_wan_path)
    with pytest.raises(ValueError, match="weights of transformer_2"):
        one.load_trainable_state_dict(_policy(tiny_wan22_path).trainable_state_dict())


def test_exported_loras_load_into_both_experts(tiny_wan22_path, tmp_path) -> None:
    """``export_lora`` writes the high-noise expert's LoRA and ``transformer_2/`` the low-noise
    one's; loaded with ``load_lora_weights`` (the second with ``load_into_transformer_2``), the
    pipeline draws the trained policy's frames."""
    import json

    from diffusers import WanPipeline

    from flowdppo.models.export import export_lora

    policy = _policy(tiny_wan22_path, guidance_scale_2=3.0)
    perturb_lora(policy)
    out = export_lora(policy, tmp_path / "lora")
    assert (
        json.loads((out / "flowdppo_export.json").read_text())["transformer_2"] == "transformer_2"
    )
    latents = policy.initial_noise(2, torch.Generator().manual_seed(4))
    ours = ode_images(policy, latents, 2.0)
    pipe = WanPipeline.from_pretrained(tiny_wan22_path)
    base = _pipeline_frames(pipe, latents, 2.0, 3.0)
    pipe.load_lora_weights(out)
    high_only = _pipeline_frames(pipe, latents, 2.0, 3.0)
    pipe.load_lora_weights(out / "transformer_2", load_into_transformer_2=True)
    theirs = _pipeline_frames(pipe, latents, 2.0, 3.0)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)
    # Each file changes the frames: the two experts' LoRAs are both in the export.
    assert (high_only - base).abs().max() > 1e-3 and (theirs - high_only).abs().max() > 1e-3


def test_checkpoint_export_writes_the_same_two_files(tiny_wan22_path, tmp_path) -> None:
    """``flowdppo export --run`` writes from a checkpoint's tensors (``trainable_state_dict``
    keys, ``transformer_2.`` for the low-noise expert): the same two files as ``export_lora``."""
    from safetensors.torch import load_file

    from flowdppo.models.export import export_lora, export_lora_weights, lora_metadata

    policy = _policy(tiny_wan22_path)
    perturb_lora(policy)
    live = export_lora(policy, tmp_path / "live")
    state = policy.trainable_state_dict()
    meta = lora_metadata(state, 4, 8, None)
    saved = export_lora_weights(state, tmp_path / "saved", family="wan", metadata=meta)
    for sub in ("", "transformer_2"):
        ours = load_file(saved / sub / "pytorch_lora_weights.safetensors")
        theirs = load_file(live / sub / "pytorch_lora_weights.safetensors")
        assert ours.keys() == theirs.keys() and all(k.startswith("transformer.") for k in ours)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="sd3 has no transformer_2"):
        export_lora_weights(state, tmp_path / "sd3", family="sd3", metadata=meta)
