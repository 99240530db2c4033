"""Tests for flowdppo/rewards/clip.py on a tiny random CLIP saved like a hub repo."""

import pytest
import torch
from transformers import CLIPImageProcessor, CLIPModel

from flowdppo.rewards.base import build_reward
from flowdppo.rewards.clip import aesthetic_mlp
from flowdppo.rewards.compute import LoadedReward, compute_rewards

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "text"]


def _images(b: int = 4, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(b, 3, size, size, generator=g)  # not the model's size: exercises resize


def _reference_logits(model_dir, images, prompts) -> torch.Tensor:
    """diag(logits_per_image) of CLIPModel.forward = exp(logit_scale) · cos(image_i, text_i)."""
    from transformers import AutoTokenizer

    from flowdppo.rewards.utils import to_pil

    model = CLIPModel.from_pretrained(model_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(to_pil(images), return_tensors="pt")
    tokens = AutoTokenizer.from_pretrained(model_dir)(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels["pixel_values"], **tokens)
    return out.logits_per_image.diagonal()


def test_pickscore_matches_clip_forward_logits(tiny_clip_dir):
    reward = build_reward(
        "pickscore", model_path=str(tiny_clip_dir), processor_path=None, device="cpu"
    )
    images = _images()
    out = reward(images, PROMPTS, [{}] * 4)
    assert out.scores.shape == (4,) and out.scores.dtype == torch.float32
    assert out.scores.device.type == "cpu" and reward.device == torch.device("cpu")
    expected = _reference_logits(tiny_clip_dir, images, PROMPTS)
    torch.testing.assert_close(out.scores, expected, rtol=1e-5, atol=1e-5)


def test_clip_score_is_100_times_clamped_cosine_and_deterministic(tiny_clip_dir):
    reward = build_reward("clip_score", model_path=str(tiny_clip_dir), device="cpu")
    images = _images()
    out = reward(images, PROMPTS, [{}] * 4)
    scale = CLIPModel.from_pretrained(tiny_clip_dir).logit_scale.exp()
    cos = _reference_logits(tiny_clip_dir, images, PROMPTS) / scale
    torch.testing.assert_close(out.details["cosine"], cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.scores, (100 * cos).clamp(min=0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(reward(images, PROMPTS, [{}] * 4).scores, out.scores, rtol=0, atol=0)


def test_scores_do_not_depend_on_batching(tiny_clip_dir):
    images = _images()
    whole = build_reward("pickscore", model_path=str(tiny_clip_dir), processor_path=None)
    single = build_reward(
        "pickscore", model_path=str(tiny_clip_dir), processor_path=None, batch_size=1
    )
    a = compute_rewards([LoadedReward("p", 1.0, whole)], images, PROMPTS).scores["p"]
    b = compute_rewards([LoadedReward("p", 1.0, single)], images, PROMPTS).scores["p"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _save_tiny_mlp(path, dims=(16, 12, 8, 6, 4, 1)) -> torch.nn.Module:
    torch.manual_seed(5)
    layers = [torch.nn.Linear(dims[0], dims[1]), torch.nn.Dropout(0.2)]
    layers += [torch.nn.Linear(dims[1], dims[2]), torch.nn.Dropout(0.2)]
    layers += [torch.nn.Linear(dims[2], dims[3]), torch.nn.Dropout(0.1)]
    layers += [torch.nn.Linear(dims[3], dims[4]), torch.nn.Linear(dims[4], dims[5])]
    mlp = torch.nn.Sequential()
    mlp.add_module("layers", torch.nn.Sequential(*layers))
    torch.save(mlp.state_dict(), path)
    return mlp.eval()


def test_aesthetic_is_mlp_of_normalised_image_embedding(tiny_clip_dir, tmp_path):
    mlp = _save_tiny_mlp(tmp_path / "mlp.pth")
    reward = build_reward(
        "aesthetic", mlp_path=str(tmp_path / "mlp.pth"), model_path=str(tiny_clip_dir)
    )
    images = _images(3)
    scores = reward(images, PROMPTS[:3], [{}] * 3).scores
    assert scores.shape == (3,) and scores.dtype == torch.float32
    from flowdppo.rewards.utils import to_pil

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(tiny_clip_dir)(to_pil(images), return_tensors="pt")
    with torch.no_grad():
        feats = model(pixel_values=pixels["pixel_values"], input_ids=torch.zeros(1, 2).long())
        emb = feats.image_embeds  # already projected and normalised by CLIPModel.forward
        expected = mlp(emb).squeeze(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_aesthetic_rejects_wrong_embedding_size(tiny_clip_dir, tmp_path):
    _save_tiny_mlp(tmp_path / "mlp.pth", dims=(768, 8, 8, 4, 4, 1))
    with pytest.raises(ValueError, match=r"expects 768-d embeddings but .* gives 16-d"):
        build_reward("aesthetic", mlp_path=str(tmp_path / "mlp.pth"), model_path=str(tiny_clip_dir))


def test_aesthetic_mlp_rejects_other_state_dicts():
    with pytest.raises(ValueError, match=r"missing \['layers.0.weight'"):
        aesthetic_mlp({"fc.weight": torch.zeros(1, 1)})


def test_bad_dtype_names_the_field(tiny_clip_dir):
    with pytest.raises(ValueError, match=r"clip_score\.dtype must be one of"):
        build_reward("clip_score", model_path=str(tiny_clip_dir), dtype="float8")
