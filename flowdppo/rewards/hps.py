"""HPSv2.1 (Wu et al. 2023) through ``transformers`` CLIP, and ImageReward as an optional extra.

HPSv2.1 is an OpenCLIP ViT-H/14 fine-tuned on human preferences; its score is
``cos(image, text)`` of the normalised embeddings (no logit scale). The ``hpsv2`` package needs
``open_clip_torch``, which needs torchvision (no CPU build here), so we load the published
checkpoint (``HPS_v2.1_compressed.pt``, OpenCLIP key names) into ``transformers.CLIPModel`` with
the architecture, tokenizer and processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the
OpenCLIP ViT-H/14 in transformers format: GELU, LayerNorm eps 1e-5, EOS pooling). OpenCLIP's
eval transform (bicubic resize of the shortest side to 224, centre crop, OpenAI CLIP mean/std) is
that repo's ``CLIPImageProcessor``.

ImageReward (BLIP ViT-L + a BERT cross-attention text encoder + MLP head) is not re-implemented:
the ``imagereward`` reward needs the ``image-reward`` package, installed by the user where it
installs (it needs torchvision and timm), and raises a clear error otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from flowdppo.rewards.base import RewardOutput, register_reward
from flowdppo.rewards.clip import _ClipReward, load_state_dict
from flowdppo.rewards.utils import check_images

_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_FIXED = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
# "<tower>transformer.resblocks.<i>.<sub>.<kind>", and "...attn.in_proj_<kind>" for the fused q/k/v.
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)$")


def _convert_block(m: re.Match, value: torch.Tensor) -> dict[str, torch.Tensor]:
    tower = "vision_model" if m.group(1) else "text_model"
    prefix = f"{tower}.encoder.layers.{m.group(2)}"
    sub, kind = m.group(3), m.group(4)
    if sub == "attn.in_proj":  # fused [3W, W] / [3W] → q, k, v
        q, k, v = value.chunk(3, dim=0)
        return {
            f"{prefix}.self_attn.{n}_proj.{kind}": t for n, t in zip("qkv", (q, k, v), strict=True)
        }
    if sub not in _LAYER:
        raise KeyError(sub)
    return {f"{prefix}.{_LAYER[sub]}.{kind}": value}


def open_clip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP (ViT, non-custom text) state dict to ``transformers.CLIPModel`` keys.

    In-projection weights are split into q/k/v; ``text_projection`` [W, P] and ``visual.proj``
    [W, P] become Linear weights [P, W]. Unknown keys are errors (another architecture).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in _FIXED:
            out[_FIXED[key]] = value
        elif key in ("text_projection", "visual.proj"):
            name = "text_projection" if key == "text_projection" else "visual_projection"
            out[f"{name}.weight"] = value.t().contiguous()
        elif (m := _BLOCK.match(key)) is not None:
            try:
                out.update(_convert_block(m, value))
            except KeyError:
                raise ValueError(f"hpsv2: unexpected OpenCLIP key {key!r}") from None
        elif key != "attn_mask":
            raise ValueError(f"hpsv2: unexpected OpenCLIP key {key!r} (not a ViT OpenCLIP model)")
    return out


@register_reward("hpsv2")
class HPSv2(_ClipReward):
    """HPSv2.1: ``cos(image, text)`` of the preference-tuned OpenCLIP ViT-H/14."""

    name = "hpsv2"

    def __init__(
        self,
        checkpoint_path: str,
        clip_path: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        super().__init__(clip_path, None, device, dtype, batch_size)
        state = open_clip_to_transformers(load_state_dict(checkpoint_path))
        model = self.clip.model
        expected = set(model.state_dict()) - {"text_model.embeddings.position_ids"}
        expected -= {"vision_model.embeddings.position_ids"}
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(
                f"hpsv2.checkpoint_path {checkpoint_path} does not fit {clip_path}: "
                f"missing {missing[:5]}, unexpected {extra[:5]}"
            )
        dtype_ = next(model.parameters()).dtype
        model.load_state_dict({k: v.to(dtype_) for k, v in state.items()}, strict=False)

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        cos = self.cosine(images, prompts)
        return RewardOutput(scores=cos.cpu())


@register_reward("imagereward")
class ImageRewardModel:
    """ImageReward v1.0 via the ``image-reward`` package (optional; not installable here)."""

    def __init__(
        self, model_path: str = "ImageReward-v1.0", device: str | None = None, batch_size: int = 8
    ) -> None:
        try:
            import ImageReward as RM
        except ImportError as exc:
            raise ImportError(
                "reward 'imagereward' needs the 'image-reward' package (pip install image-reward), "
                "which needs torchvision and timm; it is not part of flowdppo[rewards]. "
                "See docs/rewards.md."
            ) from exc
        from flowdppo.rewards.utils import check_positive_int, resolve_device

        self.name = "imagereward"
        self.batch_size = check_positive_int(batch_size, "imagereward.batch_size")
        self.device = resolve_device(device)
        self.model = RM.load(model_path, device=str(self.device))

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        from flowdppo.rewards.utils import to_pil

        check_images(images, self.name)
        scores = [self.model.score(p, im) for p, im in zip(prompts, to_pil(images), strict=True)]
        return RewardOutput(scores=torch.tensor(scores, dtype=torch.float32).flatten())
