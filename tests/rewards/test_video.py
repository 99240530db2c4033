"""Video rewards against hand-computed values: ``video_frames`` (an image reward averaged over
frames) and ``temporal_consistency`` (mean cosine of consecutive frames' features)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from flowdppo.rewards.base import available_rewards, build_reward
from flowdppo.rewards.compute import build_rewards, compute_rewards


def _jpeg_kb(frame: torch.Tensor, quality: int = 95) -> float:
    """The JPEG size of one [3, H, W] frame, through Pillow directly."""
    from PIL import Image

    arr = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


def test_video_rewards_are_registered() -> None:
    assert {"video_frames", "temporal_consistency"} <= set(available_rewards())


def test_video_frames_is_the_mean_of_the_image_reward_over_frames() -> None:
    videos = torch.rand(2, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    videos[1, 2] = 0.5  # a flat frame compresses far better than noise: the frames differ
    reward = build_reward("video_frames", reward="jpeg_incompressibility", reward_kwargs={})
    out = reward(videos, ["a", "b"], [{}, {}])
    per_frame = torch.tensor([[_jpeg_kb(videos[b, f]) for f in range(5)] for b in range(2)])
    torch.testing.assert_close(out.scores, per_frame.mean(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.details["jpeg_kb"], per_frame.mean(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        out.details["frame_std"], per_frame.std(dim=1, unbiased=False), rtol=0, atol=1e-6
    )
    std = out.details["frame_std"]
    assert std[1] > 3 * std[0]  # the flat frame shows in the spread

    # num_frames=3 of 5: frames 0, 2, 4 (round(linspace(0, 4, 3))); batches of 4 frames.
    sub = build_reward(
        "video_frames",
        reward="jpeg_compressibility",
        reward_kwargs={"quality": 50, "batch_size": 4},
        num_frames=3,
    )
    expected = -torch.tensor(
        [[_jpeg_kb(videos[b, f], quality=50) for f in (0, 2, 4)] for b in range(2)]
    ).mean(dim=1)
    torch.testing.assert_close(
        sub(videos, ["a", "b"], [{}, {}]).scores, expected, atol=1e-6, rtol=0
    )

    # An image [B, 3, H, W] is a one-frame video: the image reward's own score.
    image = videos[:, 0]
    single = reward(image, ["a", "b"], [{}, {}]).scores
    torch.testing.assert_close(single, per_frame[:, 0], rtol=0, atol=1e-6)


def test_video_frames_passes_each_frame_its_videos_prompt() -> None:
    from flowdppo.rewards import base

    seen: list[str] = []

    class Echo:  # records the prompts; scores a frame by its brightness
        name, batch_size, device = "echo_test", 3, torch.device("cpu")

        def __call__(self, images, prompts, metadata):
            seen.extend(f"{p}:{m['k']}" for p, m in zip(prompts, metadata, strict=True))
            return base.RewardOutput(scores=images.mean(dim=(1, 2, 3)))

    base._REGISTRY["echo_test"] = Echo
    try:
        videos = torch.zeros(2, 2, 3, 4, 4)
        videos[0, 1], videos[1] = 1.0, 0.25  # video 0: frames 0 and 1; video 1: 0.25 twice
        out = build_reward("video_frames", reward="echo_test")(
            videos, ["p", "q"], [{"k": 1}, {"k": 2}]
        )
    finally:
        del base._REGISTRY["echo_test"]
    assert seen == ["p:1", "p:1", "q:2", "q:2"]
    torch.testing.assert_close(out.scores, torch.tensor([0.5, 0.25]))


def test_temporal_consistency_by_hand() -> None:
    # 2×2 frames (size=2: no pooling). Centred features: f0 = x - mean(x).
    x = (
        torch.tensor([0.1, 0.3, 0.6, 0.2]).reshape(1, 2, 2).expand(3, 2, 2)
    )  # [3, 2, 2], channels alike
    still = torch.stack([x, 0.5 * x + 0.2, x])  # brightness/contrast changes only: cos = 1, 1
    flip = torch.stack([x, 1 - x, x])  # inverted frame: centred feature negated: cos = -1, -1
    y = torch.tensor([0.6, 0.2, 0.1, 0.3]).reshape(1, 2, 2).expand(3, 2, 2)
    # centred x: [-0.2, 0, 0.3, -0.1], centred y: [0.3, -0.1, -0.2, 0]; dot = -0.06 - 0.06 = -0.12
    # per channel; norms² 0.14 each: cos = -0.12 / 0.14 = -6/7.
    moved = torch.stack([x, y, y])  # cos = -6/7, 1
    flat = torch.stack([x, torch.full_like(x, 0.4), x])  # constant frame: cos 0, 0
    videos = torch.stack([still, flip, moved, flat])  # [4, 3, 3, 2, 2]
    reward = build_reward("temporal_consistency", size=2)
    out = reward(videos, ["p"] * 4, [{}] * 4)
    expected = torch.tensor([1.0, -1.0, (1 - 6 / 7) / 2, 0.0])
    torch.testing.assert_close(out.scores, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        out.details["min_similarity"], torch.tensor([1.0, -1.0, -6 / 7, 0.0]), rtol=0, atol=1e-6
    )


def test_temporal_consistency_pools_to_size() -> None:
    # 4×4 frames pooled to 2×2: each output pixel is the mean of a 2×2 block.
    a = torch.tensor(
        [[0.0, 0.2, 1.0, 0.8], [0.2, 0.0, 0.6, 1.0], [0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.3]]
    )
    b = a.flip(-1)  # mirrored: blocks [0.1, 0.85, 0.5, 0.15] -> [0.85, 0.1, 0.15, 0.5]
    video = torch.stack([a, b]).unsqueeze(1).expand(2, 3, 4, 4)[None]  # [1, 2, 3, 4, 4]
    pa = torch.tensor([0.1, 0.85, 0.5, 0.15])
    pb = torch.tensor([0.85, 0.1, 0.15, 0.5])
    ca, cb = pa - pa.mean(), pb - pb.mean()
    cos = float(ca @ cb / (ca.norm() * cb.norm()))
    out = build_reward("temporal_consistency", size=2)(video, ["p"], [{}])
    assert math.isclose(float(out.scores[0]), cos, abs_tol=1e-6)
    assert cos < 0  # the mirrored layout is anti-correlated


def test_temporal_consistency_with_clip_features(tiny_clip_dir) -> None:
    from transformers import CLIPImageProcessor, CLIPModel

    from flowdppo.rewards.utils import to_pil

    videos = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reward = build_reward("temporal_consistency", clip_model=str(tiny_clip_dir), device="cpu")
    out = reward(videos, ["a", "b"], [{}, {}])
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        pixels = processor(images=to_pil(videos.flatten(0, 1)), return_tensors="pt")["pixel_values"]
        emb = model.get_image_features(pixel_values=pixels)
    emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
    emb = emb.reshape(2, 3, -1)
    cos = torch.nn.functional.cosine_similarity(emb[:, :-1], emb[:, 1:], dim=-1)
    torch.testing.assert_close(out.scores, cos.mean(dim=1), rtol=0, atol=1e-5)


def test_video_rewards_through_compute_rewards_and_errors() -> None:
    videos = torch.rand(4, 5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    rewards = build_rewards(
        [
            {"name": "video_frames", "kwargs": {"reward": "jpeg_compressibility"}},
            {"name": "temporal_consistency", "weight": 0.5, "kwargs": {"size": 4}},
        ]
    )
    batch = compute_rewards(rewards, videos, ["p"] * 4)
    assert batch.matrix().shape == (4, 2) and bool(batch.valid.all())
    assert set(batch.details) == {
        "video_frames/jpeg_kb",
        "video_frames/frame_std",
        "temporal_consistency/min_similarity",
    }
    tc = build_reward("temporal_consistency")
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        tc(videos[:, 0], ["p"] * 4, [{}] * 4)
    with pytest.raises(ValueError, match="at least 2 frames"):
        tc(videos[:, :1], ["p"] * 4, [{}] * 4)
    with pytest.raises(ValueError, match="image reward"):
        build_reward("video_frames", reward="temporal_consistency")
    with pytest.raises(ValueError, match="num_frames"):
        build_reward("video_frames", num_frames=0)
    with pytest.raises(ValueError, match="size"):
        build_reward("temporal_consistency", size=0)
