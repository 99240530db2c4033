"""Video rewards that need no video model: videos [B, F, 3, H, W] float in [0, 1] (the frames of
``WanPolicy.decode``, the layout of ``WanPipeline(output_type="pt").frames``).

* ``video_frames``: any registered image reward averaged over frames,
  ``score_b = (1/|S|) Σ_{f ∈ S} r(video_b[f], prompt_b)``, with ``S`` every frame or
  ``num_frames`` of them evenly spaced (first and last included: ``round(linspace(0, F - 1, n))``).
  The image reward sees each frame with its video's prompt and metadata. Details: the image
  reward's floating-point details averaged over the same frames, and ``frame_std`` (the spread
  of the per-frame scores, population std). Images [B, 3, H, W] are scored as one-frame videos.
* ``temporal_consistency``: mean cosine similarity of consecutive frames' features,
  ``score_b = (1/(F - 1)) Σ_{f < F-1} cos(φ(video_b[f]), φ(video_b[f + 1]))``, in [-1, 1]; 1 when
  every frame's feature is a positive multiple of the previous one. Feature ``φ``:
  ``pixels`` (default): the frame area-averaged to ``size`` × ``size`` (adaptive average pooling,
  no change when the frame is already that size), flattened over channels and pixels and centred
  (its mean subtracted), so that ``cos`` is the Pearson correlation of the two downsampled
  frames: a global brightness or contrast change between frames costs nothing, motion and
  flicker of structure do. A constant frame has feature 0, whose cosine with anything is taken
  as 0 (``torch.nn.functional.cosine_similarity``, eps 1e-8). With ``clip_model`` set: the
  frame's CLIP image embedding (``flowdppo.rewards.clip.ClipEmbedder``, the model's own
  preprocessing). Detail: ``min_similarity``, the lowest consecutive-frame cosine (a cut).

An image reward served with ``flowdppo reward-server`` scores frames through ``video_frames`` with
``reward: remote``; the remote protocol carries images, not videos, so a video reward model
(one score from all frames at once) cannot be served through it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from flowdppo.rewards.base import RewardOutput, build_reward, register_reward
from flowdppo.rewards.utils import check_positive_int, resolve_device

VIDEO_REWARDS = ("video_frames", "temporal_consistency")


def check_videos(videos: torch.Tensor, who: str) -> None:
    """Raise a clear error unless ``videos`` is float [B, F, 3, H, W]."""
    if not isinstance(videos, torch.Tensor):
        raise TypeError(f"{who}: videos must be a torch.Tensor, got {type(videos).__name__}")
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"{who}: videos must be [B, F, 3, H, W], got shape {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise TypeError(f"{who}: videos must be floating point in [0, 1], got {videos.dtype}")


def frame_indices(num_frames: int, wanted: int | None) -> torch.Tensor:
    """Indices of the frames scored: all, or ``wanted`` evenly spaced (first and last kept)."""
    if wanted is None or wanted >= num_frames:
        return torch.arange(num_frames)
    return torch.linspace(0, num_frames - 1, wanted).round().long()


@register_reward("video_frames")
class VideoFrames:
    """An image reward averaged over a video's frames (module docstring)."""

    name = "video_frames"

    def __init__(
        self,
        reward: str = "jpeg_compressibility",
        reward_kwargs: dict[str, Any] | None = None,
        num_frames: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if reward in VIDEO_REWARDS:
            raise ValueError(f"video_frames.reward must be an image reward, got {reward!r}")
        if reward_kwargs is not None and not isinstance(reward_kwargs, dict):
            raise ValueError(f"video_frames.reward_kwargs must be a mapping, got {reward_kwargs!r}")
        if num_frames is not None:
            check_positive_int(num_frames, "video_frames.num_frames")
        self.image_reward = build_reward(reward, **(reward_kwargs or {}))
        self.num_frames = num_frames
        self.batch_size = check_positive_int(batch_size, "video_frames.batch_size")
        self.device = self.image_reward.device

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        videos = (
            images[:, None] if isinstance(images, torch.Tensor) and images.ndim == 4 else images
        )
        check_videos(videos, self.name)
        b = videos.shape[0]
        idx = frame_indices(videos.shape[1], self.num_frames).to(videos.device)
        n = idx.numel()
        frames = videos.index_select(1, idx).flatten(0, 1)  # [B·n, 3, H, W], video-major
        scores, details = self._score_frames(
            frames, [p for p in prompts for _ in range(n)], [m for m in metadata for _ in range(n)]
        )
        per_frame = scores.reshape(b, n)  # [B, n]
        out = {k: v.reshape(b, n, *v.shape[1:]).mean(dim=1) for k, v in details.items()}
        out["frame_std"] = per_frame.std(dim=1, unbiased=False)
        return RewardOutput(scores=per_frame.mean(dim=1), details=out)

    def _score_frames(
        self, frames: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The image reward on frames [N, 3, H, W] in its own batches: scores [N] float32 CPU and
        its floating-point details [N, ...]."""
        step = int(self.image_reward.batch_size)
        scores, details = [], []
        for lo in range(0, frames.shape[0], step):
            sl = slice(lo, lo + step)
            out = self.image_reward(frames[sl].to(self.device), prompts[sl], metadata[sl])
            scores.append(out.scores.detach().float().cpu())
            details.append(
                {
                    k: v.detach().float().cpu()
                    for k, v in out.details.items()
                    if v.is_floating_point()
                }
            )
        keys = set.intersection(*(set(d) for d in details))
        return torch.cat(scores), {k: torch.cat([d[k] for d in details]) for k in sorted(keys)}


def pixel_features(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames [N, 3, H, W] → centred features [N, 3·size·size] float64: area-averaged to
    size × size, flattened, minus each row's mean (in float64, so that a constant frame's
    feature is exactly 0, not rounding noise whose cosine could be ±1)."""
    small = F.adaptive_avg_pool2d(frames.float(), (size, size))  # [N, 3, size, size]
    flat = small.flatten(1).double()  # [N, 3·size·size]
    return flat - flat.mean(dim=1, keepdim=True)


@register_reward("temporal_consistency")
class TemporalConsistency:
    """Mean cosine similarity of consecutive frames' features (module docstring)."""

    name = "temporal_consistency"

    def __init__(
        self,
        size: int = 32,
        clip_model: str | None = None,
        device: str | None = None,
        batch_size: int = 8,
    ) -> None:
        self.size = check_positive_int(size, "temporal_consistency.size")
        self.batch_size = check_positive_int(batch_size, "temporal_consistency.batch_size")
        self.device = resolve_device(device) if clip_model else torch.device("cpu")
        self.embedder = None
        if clip_model is not None:
            from flowdppo.rewards.clip import ClipEmbedder

            self.embedder = ClipEmbedder(clip_model, None, self.device, torch.float32)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """φ of frames [N, 3, H, W] → [N, D] (float64 pixels, float32 CLIP embeddings)."""
        if self.embedder is not None:
            return self.embedder.image_embeds(frames)
        return pixel_features(frames.to(self.device), self.size)

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        check_videos(images, self.name)
        b, f = images.shape[:2]
        if f < 2:
            raise ValueError(f"{self.name}: videos need at least 2 frames, got {f}")
        feats = self.features(images.flatten(0, 1)).double().cpu().reshape(b, f, -1)  # [B, F, D]
        sims = F.cosine_similarity(feats[:, :-1], feats[:, 1:], dim=-1, eps=1e-8).float()
        return RewardOutput(
            scores=sims.mean(dim=1), details={"min_similarity": sims.min(dim=1).values}
        )
