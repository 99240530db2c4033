"""Export a trained policy so that plain diffusers can use it (``flowdppo export``).

- ``export_lora(policy, out_dir)``: the LoRA in diffusers' format, written by the pipeline
  class's own ``save_lora_weights``: ``pytorch_lora_weights.safetensors`` with keys
  ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` and the adapter metadata (rank,
  alpha, target modules) in the safetensors header. Then
  ``pipe.load_lora_weights(out_dir)`` reproduces the policy's images. The metadata matters:
  without it diffusers assumes ``alpha = rank`` and scales the update by 1 instead of
  ``alpha / rank``.
- ``export_lora_weights(lora_sd, ...)``: the same from a checkpoint's ``lora_state_dict`` and the
  LoRA settings, without building the model; ``lora_metadata`` gives those settings as the
  adapter's own ``LoraConfig`` would. ``flowdppo export --run DIR`` of a LoRA run reads the
  checkpoint's tensors and writes the file this way: no pipeline is loaded.
- ``export_full(policy, out_dir)``: a full fine-tune as a ``transformer/`` folder
  (``save_pretrained``), to be loaded with ``<Transformer>.from_pretrained(out_dir,
  subfolder="transformer")`` and passed to the pipeline.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from flowdppo.models.lora import ADAPTER_NAME, has_lora, lora_config, lora_state_dict

EXPORT_INFO = "flowdppo_export.json"
LOW_NOISE = "transformer_2."  # the low-noise expert's keys (two-expert Wan): its own file


# The diffusers pipeline class of each family, whose save_lora_weights writes the export.
PIPELINE_CLASSES = {
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "qwen_image": "QwenImagePipeline",
    "flux2_klein": "Flux2KleinPipeline",
    "wan": "WanPipeline",
}


def _pipeline_class(family: str) -> type:
    import diffusers

    if family not in PIPELINE_CLASSES:
        raise ValueError(
            f"export: family must be one of {sorted(PIPELINE_CLASSES)}, got {family!r}"
        )
    return getattr(diffusers, PIPELINE_CLASSES[family])


def _family(policy: Any) -> str:
    name = policy.pipeline_class().__name__
    return {cls: family for family, cls in PIPELINE_CLASSES.items()}[name]


def to_diffusers_keys(lora_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blocks.0.attn.to_q.lora_A.default.weight`` -> ``blocks.0.attn.to_q.lora_A.weight``.

    (diffusers' ``save_lora_weights`` then adds the ``transformer.`` prefix.)
    """
    tag = f".{ADAPTER_NAME}."
    out = {}
    for key, value in lora_sd.items():
        if tag not in key:
            raise KeyError(f"export: {key!r} is not a LoRA weight of adapter {ADAPTER_NAME!r}")
        out[key.replace(tag, ".")] = value.detach().to("cpu", torch.float32).contiguous()
    return out


def export_lora_weights(
    lora_sd: dict[str, torch.Tensor],
    out_dir: str | Path,
    *,
    family: str,
    metadata: dict[str, Any],
) -> Path:
    """Write ``lora_sd`` (keys of ``lora_state_dict``) as a diffusers LoRA folder.

    ``metadata``: the peft ``LoraConfig.to_dict()`` of the adapter (at least ``r``,
    ``lora_alpha`` and ``target_modules``).
    """
    missing = {"r", "lora_alpha", "target_modules"} - set(metadata)
    if missing:
        raise ValueError(f"export: LoRA metadata lacks {sorted(missing)}")
    pipeline_cls = _pipeline_class(family)
    if (
        "transformer_lora_adapter_metadata"
        not in inspect.signature(pipeline_cls.save_lora_weights).parameters
    ):
        raise RuntimeError(
            "export: this diffusers cannot store LoRA metadata (rank/alpha); upgrade diffusers "
            "(>= 0.35) or the exported LoRA would load with the wrong scale"
        )
    meta = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in metadata.items()}
    high = {k: v for k, v in lora_sd.items() if not k.startswith(LOW_NOISE)}
    low = {k[len(LOW_NOISE) :]: v for k, v in lora_sd.items() if k.startswith(LOW_NOISE)}
    if low and family != "wan":
        raise ValueError(f"export: {family} has no transformer_2; got keys {LOW_NOISE}*")
    out = Path(out_dir)
    for folder, part in ((out, high), (out / LOW_NOISE.rstrip("."), low)):
        if part:
            folder.mkdir(parents=True, exist_ok=True)
            pipeline_cls.save_lora_weights(
                folder,
                transformer_lora_layers=to_diffusers_keys(part),
                transformer_lora_adapter_metadata=meta,
                safe_serialization=True,
            )
    info = {"family": family, "kind": "lora", "rank": meta["r"], "alpha": meta["lora_alpha"]}
    if low:  # load with pipe.load_lora_weights(out / "transformer_2", load_into_transformer_2=True)
        info["transformer_2"] = LOW_NOISE.rstrip(".")
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def export_lora(policy: Any, out_dir: str | Path) -> Path:
    """Export a LoRA policy (a diffusers family's) for ``pipe.load_lora_weights``."""
    if not has_lora(policy.transformer):
        raise ValueError("export_lora: this policy has no LoRA (full fine-tune? use export_full)")
    metadata = lora_config(policy.transformer).to_dict()
    lora_sd = lora_state_dict(policy.transformer)
    low_noise = getattr(policy, "transformer_2", None)  # Wan2.2 A14B's second expert
    if low_noise is not None:
        lora_sd.update({LOW_NOISE + k: v for k, v in lora_state_dict(low_noise).items()})
    return export_lora_weights(lora_sd, out_dir, family=_family(policy), metadata=metadata)


def export_full(policy: Any, out_dir: str | Path) -> Path:
    """Export a fully fine-tuned transformer as ``out_dir/transformer`` (``save_pretrained``)."""
    if has_lora(policy.transformer):
        raise ValueError("export_full: this policy trains a LoRA; use export_lora")
    out = Path(out_dir)
    policy.transformer.save_pretrained(out / "transformer", safe_serialization=True)
    info = {"family": _family(policy), "kind": "full", "subfolder": "transformer"}
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def lora_metadata(
    lora_sd: dict[str, torch.Tensor], rank: int, alpha: float, targets: list[str] | None
) -> dict[str, Any]:
    """The adapter metadata ``export_lora`` writes (``LoraConfig.to_dict()`` of ``add_lora``'s
    config), from the settings alone. ``targets`` None: the modules named by ``lora_sd``'s keys
    (their last name, ``to_out.0`` kept whole)."""
    from flowdppo.models.lora import _lora_config, target_name

    if targets is None:
        targets = sorted({target_name(k.split(".lora_")[0]) for k in lora_sd})
    return _lora_config(rank, alpha, targets, 0.0).to_dict()
