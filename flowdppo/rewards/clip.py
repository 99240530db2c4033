"""CLIP-based learned rewards through ``transformers``: CLIP score, PickScore, LAION aesthetic.

Weights come from a local directory or a hub id already in the local Hugging Face cache
(``from_pretrained``). Preprocessing is each model's own ``CLIPImageProcessor`` (resize the
shortest side with bicubic filtering, centre crop, CLIP mean/std) applied to the 8-bit RGB images
(as the reference implementations do after saving/decoding), and its own tokenizer
(truncated to the text encoder's context length). Embeddings are L2-normalised.

* ``clip_score``: ``max(100 · cos(image, text), 0)`` (the torchmetrics / Hessel et al. 2021 CLIPScore
  with w = 100), default ``openai/clip-vit-large-patch14``.
* ``pickscore``: ``exp(logit_scale) · cos(image, text)`` (Kirstain et al. 2023), model
  ``yuvalkirstain/PickScore_v1`` with the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``.
* ``aesthetic``: the LAION improved aesthetic predictor (an MLP 768→1024→128→64→16→1, no
  activations) on the normalised image embedding of ``openai/clip-vit-large-patch14``; the MLP
  state dict (``sac+logos+ava1-l14-linearMSE.pth``) is a local file given as ``mlp_path``.
"""

from __future__ import annotations

from typing import Any

import torch

from flowdppo.rewards.base import RewardOutput, register_reward
from flowdppo.rewards.utils import check_images, check_positive_int, resolve_device, to_pil

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _require_transformers(reward: str) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"reward {reward!r} needs transformers: pip install 'flowdppo[rewards]'"
        ) from exc
    return transformers


def _dtype(value: str, field: str) -> torch.dtype:
    if value not in _DTYPES:
        raise ValueError(f"{field} must be one of {sorted(_DTYPES)}, got {value!r}")
    return _DTYPES[value]


def _features(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected tensor; >= 5 an output whose pooler_output it is.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipEmbedder:
    """A ``transformers`` CLIP model with its processor: normalised image/text embeddings."""

    def __init__(
        self, model_path: str, processor_path: str | None, device: torch.device, dtype: torch.dtype
    ) -> None:
        tf = _require_transformers("clip")
        processor_path = processor_path or model_path
        self.model = tf.CLIPModel.from_pretrained(model_path).to(device, dtype).eval()
        self.image_processor = tf.CLIPImageProcessor.from_pretrained(processor_path)
        self.tokenizer = tf.AutoTokenizer.from_pretrained(processor_path)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] → [B, D] float32, unit norm."""
        pixels = self.image_processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return torch.nn.functional.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """B prompts → [B, D] float32, unit norm."""
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        return torch.nn.functional.normalize(_features(out).float(), dim=-1)


class _ClipReward:
    name = "clip"

    def __init__(
        self,
        model_path: str,
        processor_path: str | None,
        device: str | None,
        dtype: str,
        batch_size: int,
    ) -> None:
        self.batch_size = check_positive_int(batch_size, f"{self.name}.batch_size")
        self.device = resolve_device(device)
        dt = _dtype(dtype, f"{self.name}.dtype")
        self.clip = ClipEmbedder(model_path, processor_path, self.device, dt)

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """cos(image embedding, prompt embedding): [B] float32 (images checked first)."""
        check_images(images, self.name)
        return (self.clip.image_embeds(images) * self.clip.text_embeds(prompts)).sum(-1)


@register_reward("clip_score")
class ClipScore(_ClipReward):
    """``max(100 · cos(CLIP image, CLIP text), 0)``."""

    name = "clip_score"

    def __init__(
        self,
        model_path: str = "openai/clip-vit-large-patch14",
        processor_path: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        super().__init__(model_path, processor_path, device, dtype, batch_size)

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        cos = self.cosine(images, prompts)
        return RewardOutput(scores=(100 * cos).clamp(min=0).cpu(), details={"cosine": cos.cpu()})


@register_reward("pickscore")
class PickScore(_ClipReward):
    """``exp(logit_scale) · cos(image, text)`` of the PickScore_v1 CLIP-H model."""

    name = "pickscore"

    def __init__(
        self,
        model_path: str = "yuvalkirstain/PickScore_v1",
        processor_path: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        super().__init__(model_path, processor_path, device, dtype, batch_size)

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        cos = self.cosine(images, prompts)
        scale = self.clip.model.logit_scale.detach().float().exp().cpu()
        return RewardOutput(scores=scale * cos.cpu(), details={"cosine": cos.cpu()})


def aesthetic_mlp(state_dict: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    """The LAION predictor's MLP (Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear,
    Linear; no activations), sized from ``state_dict`` (keys ``layers.{0,2,4,6,7}.*``)."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    idx = (0, 2, 4, 6, 7)
    missing = [f"layers.{i}.weight" for i in idx if f"layers.{i}.weight" not in state_dict]
    if missing:
        raise ValueError(f"aesthetic.mlp_path: not a LAION aesthetic MLP, missing {missing}")
    shapes = [tuple(state_dict[f"layers.{i}.weight"].shape) for i in idx]  # (out, in)
    lin = [torch.nn.Linear(i, o) for o, i in shapes]
    layers = [lin[0], torch.nn.Dropout(0.2), lin[1], torch.nn.Dropout(0.2), lin[2]]
    layers += [torch.nn.Dropout(0.1), lin[3], lin[4]]
    mlp = torch.nn.Sequential()
    mlp.add_module("layers", torch.nn.Sequential(*layers))
    mlp.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return mlp.eval()


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, or a torch file loaded with ``weights_only=True`` (no pickle code)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


@register_reward("aesthetic")
class Aesthetic(_ClipReward):
    """LAION improved aesthetic predictor: MLP(normalised CLIP ViT-L/14 image embedding)."""

    name = "aesthetic"

    def __init__(
        self,
        mlp_path: str,
        model_path: str = "openai/clip-vit-large-patch14",
        processor_path: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        super().__init__(model_path, processor_path, device, dtype, batch_size)
        self.mlp = aesthetic_mlp(load_state_dict(mlp_path)).to(self.device)
        dim = self.clip.model.config.projection_dim
        if self.mlp.layers[0].in_features != dim:
            raise ValueError(
                f"aesthetic.mlp_path expects {self.mlp.layers[0].in_features}-d embeddings but "
                f"{model_path} gives {dim}-d (use openai/clip-vit-large-patch14 for the LAION MLP)"
            )

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        check_images(images, self.name)
        scores = self.mlp(self.clip.image_embeds(images)).squeeze(-1)
        return RewardOutput(scores=scores.float().cpu())
