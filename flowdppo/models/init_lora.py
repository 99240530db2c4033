"""Start a LoRA policy from a published diffusers LoRA (``model.init_lora``).

The file is read by the pipeline class's own ``lora_state_dict`` classmethod (no pipeline is
built), which also converts the formats diffusers knows (kohya, xlabs, ... for FLUX.1) to its
keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``. Each module's pair is copied
into the policy's adapter (``<module>.lora_A.default.weight``, ``flowdppo.models.lora``), B
rescaled so that the update equals what ``pipe.load_lora_weights`` applies:

    scale_file · B_file · A_file = scale_ours · B_ours · A_ours,  B_ours = B_file · scale_file / scale_ours

with ``scale = alpha / rank`` (``alpha / sqrt(rank)`` for rsLoRA) and the file's alpha from its
adapter metadata (``lora_alpha``, ``alpha_pattern``), else its ``<module>.alpha`` tensors, else
``alpha = rank`` (diffusers' convention for a file without either). So the policy's first samples
are the published adapter's, whatever ``model.lora_alpha``. The file's rank must be
``model.lora_rank``; modules the policy adapts but the file does not keep their zero update
(B = 0). The reference model stays the base model (the adapter disabled).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch

from flowdppo.models.lora import ADAPTER_NAME, has_lora, lora_config, target_name

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PREFIX = "transformer."


def lora_file(path: str | Path) -> Path:
    """The ``.safetensors`` file of a LoRA folder or file; clear errors naming what was expected."""
    path = Path(path).expanduser()
    expected = f"a diffusers LoRA folder (with {WEIGHT_NAME}) or a .safetensors file"
    if not path.exists():
        raise FileNotFoundError(f"model.init_lora: {path} does not exist; expected {expected}")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"model.init_lora: {path} is not a .safetensors file; expected {expected}"
            )
        return path
    if (path / WEIGHT_NAME).is_file():
        return path / WEIGHT_NAME
    found = sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"model.init_lora: {path} holds no {WEIGHT_NAME} and {len(found)} other .safetensors "
            f"files ({[f.name for f in found][:5]}); expected {expected}"
        )
    return found[0]


def read_lora(
    pipeline_cls: type, file: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict in diffusers keys, alpha tensors by key, metadata) of a LoRA file, through
    ``pipeline_cls.lora_state_dict`` (a classmethod: nothing is instantiated)."""
    reader = pipeline_cls.lora_state_dict
    kwargs: dict[str, Any] = {"weight_name": file.name, "return_lora_metadata": True}
    alphas_too = "return_alphas" in inspect.signature(reader).parameters
    if alphas_too:
        kwargs["return_alphas"] = True
    try:
        out = reader(str(file.parent), **kwargs)
    except Exception as err:  # safetensors/diffusers errors do not name our setting
        raise ValueError(
            f"model.init_lora: {file} is not a LoRA that {pipeline_cls.__name__} reads "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''})"
        ) from err
    state, meta = out[0], out[-1] or {}
    alphas = (out[1] or {}) if alphas_too else {}
    return dict(state), dict(alphas), dict(meta)


def _file_scale(module: str, rank: int, meta: dict[str, Any], alphas: dict[str, Any]) -> float:
    """The scale diffusers applies to ``module``'s ``B·A`` when it loads the file."""
    alpha: float = rank  # no metadata, no alpha tensors: alpha = rank (scale 1)
    if meta.get(PREFIX + "lora_alpha") is not None:
        alpha = float(meta[PREFIX + "lora_alpha"])
        for pattern, value in (meta.get(PREFIX + "alpha_pattern") or {}).items():
            if module == pattern or module.endswith("." + pattern):
                alpha = float(value)
    else:
        for key in (f"{PREFIX}{module}.alpha", f"{module}.alpha"):
            if key in alphas:
                alpha = float(alphas[key])
    root = math.sqrt(rank) if meta.get(PREFIX + "use_rslora") else rank
    return alpha / root


def _pairs(state: dict[str, torch.Tensor], file: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A": lora_A weight, "B": lora_B weight}}`` of the transformer's keys."""
    others = sorted({k.split(".")[0] for k in state if not k.startswith(PREFIX)})
    if others:
        raise ValueError(
            f"model.init_lora: {file} holds LoRA weights of {others}; only the transformer's "
            "can start a run (text-encoder LoRAs are not supported)"
        )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, rest = key[len(PREFIX) :].partition(".lora_")
        if rest not in ("A.weight", "B.weight"):
            raise ValueError(
                f"model.init_lora: {file}: {key} is not a plain LoRA weight (expected "
                "<module>.lora_A.weight / lora_B.weight; DoRA and LoRA biases are not supported)"
            )
        pairs.setdefault(module, {})[rest[0]] = value
    broken = sorted(m for m, p in pairs.items() if len(p) != 2)
    if broken:
        raise ValueError(f"model.init_lora: {file}: {broken[:5]} lack lora_A or lora_B")
    return pairs


def init_lora(policy: Any, path: str | Path) -> int:
    """Load the LoRA at ``path`` into ``policy.transformer``'s adapter (module docstring);
    returns the number of modules loaded."""
    if getattr(policy, "transformer_2", None) is not None:
        raise ValueError(
            "model.init_lora: not supported for a two-expert Wan2.2 A14B policy (one LoRA file "
            "would initialise only the high-noise expert); set model.init_lora: null"
        )
    transformer = policy.transformer
    if not has_lora(transformer):
        raise ValueError("model.init_lora: this policy has no LoRA (model.full_finetune is on)")
    file = lora_file(path)
    state, alphas, meta = read_lora(policy.pipeline_class(), file)
    if meta.get(PREFIX + "use_dora"):
        raise ValueError(f"model.init_lora: {file} is a DoRA adapter; only LoRA is supported")
    pairs = _pairs(state, file)
    config = lora_config(transformer)
    ours_scale = config.lora_alpha / config.r
    params = dict(transformer.named_parameters())
    tag = f".{ADAPTER_NAME}.weight"
    absent = sorted(m for m in pairs if f"{m}.lora_A{tag}" not in params)
    if absent:
        leaves = sorted({target_name(m) for m in pairs})
        raise ValueError(
            f"model.init_lora: {file} adapts {len(absent)} modules this policy has no LoRA on "
            f"(e.g. {absent[:3]}); set model.lora_target_modules to cover the file's: {leaves}"
        )
    with torch.no_grad():
        for module, pair in pairs.items():
            a, b = params[f"{module}.lora_A{tag}"], params[f"{module}.lora_B{tag}"]
            if pair["A"].shape != a.shape or pair["B"].shape != b.shape:
                raise ValueError(
                    f"model.init_lora: {file}: {module} has rank {pair['A'].shape[0]} "
                    f"(lora_A {tuple(pair['A'].shape)}); this policy's is {a.shape[0]} "
                    f"(lora_A {tuple(a.shape)}): set model.lora_rank: {pair['A'].shape[0]}"
                )
            ratio = _file_scale(module, pair["A"].shape[0], meta, alphas) / ours_scale
            a.copy_(pair["A"].to(a))
            b.copy_((pair["B"].double() * ratio).to(b))
    return len(pairs)
