"""Tests for flowdppo/rewards/hps.py: an OpenCLIP-format checkpoint loaded into transformers CLIP."""

import pytest
import torch
from transformers import CLIPModel

from flowdppo.rewards.base import build_reward
from flowdppo.rewards.hps import open_clip_to_transformers

PROMPTS = ["a cat", "a dog on a skateboard", "a bowl of fruit"]


def _to_open_clip(hf: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """The OpenCLIP names of a transformers CLIP state dict, written out by hand."""
    oc = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].t(),
        "logit_scale": hf["logit_scale"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].t(),
    }
    pairs = [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1")]
    pairs += [("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")]
    for oc_tower, hf_tower in (("", "text_model"), ("visual.", "vision_model")):
        for i in range(num_layers):
            src, dst = f"{hf_tower}.encoder.layers.{i}", f"{oc_tower}transformer.resblocks.{i}"
            for kind in ("weight", "bias"):
                for o, h in pairs:
                    oc[f"{dst}.{o}.{kind}"] = hf[f"{src}.{h}.{kind}"]
                qkv = [hf[f"{src}.self_attn.{n}_proj.{kind}"] for n in "qkv"]
                oc[f"{dst}.attn.in_proj_{kind}"] = torch.cat(qkv)
    return oc


def test_hpsv2_scores_are_cosines_of_the_converted_model(tiny_clip_dir, tmp_path):
    # A "fine-tuned" model: the tiny CLIP with different weights, saved in OpenCLIP format.
    torch.manual_seed(11)
    tuned = CLIPModel(CLIPModel.from_pretrained(tiny_clip_dir).config).eval()
    oc = _to_open_clip(tuned.state_dict(), num_layers=2)
    oc["attn_mask"] = torch.zeros(77, 77)  # OpenCLIP checkpoints may carry it; ignored
    torch.save({"state_dict": {f"module.{k}": v for k, v in oc.items()}}, tmp_path / "hps.pt")

    reward = build_reward(
        "hpsv2", checkpoint_path=str(tmp_path / "hps.pt"), clip_path=str(tiny_clip_dir)
    )
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    scores = reward(images, PROMPTS, [{}] * 3).scores
    assert scores.shape == (3,) and scores.dtype == torch.float32

    from transformers import AutoTokenizer, CLIPImageProcessor

    from flowdppo.rewards.utils import to_pil

    pixels = CLIPImageProcessor.from_pretrained(tiny_clip_dir)(to_pil(images), return_tensors="pt")
    tokens = AutoTokenizer.from_pretrained(tiny_clip_dir)(
        PROMPTS, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = tuned(pixel_values=pixels["pixel_values"], **tokens)
    expected = (out.image_embeds * out.text_embeds).sum(-1)  # normalised embeddings, no scale
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_conversion_rejects_other_architectures():
    with pytest.raises(ValueError, match=r"unexpected OpenCLIP key 'visual\.trunk\.x'"):
        open_clip_to_transformers({"visual.trunk.x": torch.zeros(1)})


def test_checkpoint_that_does_not_fit_the_architecture(tiny_clip_dir, tmp_path):
    torch.save({"logit_scale": torch.tensor(1.0)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"does not fit .*missing \["):
        build_reward(
            "hpsv2", checkpoint_path=str(tmp_path / "bad.pt"), clip_path=str(tiny_clip_dir)
        )


def test_imagereward_without_its_package_is_a_clear_error():
    try:
        import ImageReward  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs the 'image-reward' package"):
            build_reward("imagereward")
    else:
        pytest.skip("image-reward is installed")
