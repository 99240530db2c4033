"""Plumbing shared by the diffusers adapters (``sd3.py``, ``flux.py``).

What lives here is the part of a policy that does not depend on the model family: loading a
pipeline (folder, cached hub id or in-memory object), choosing the precision, LoRA or full
fine-tuning of the transformer, the per-prompt embedding cache, the scheduler's sigmas, the
float32 VAE decode and the reference-model context. Each family adapter adds only its prompt
encoding and its transformer call.

Nothing here re-implements the diffusers denoising loop: the rollout loop is
``flowdppo.core.rollout`` and each adapter answers one velocity query at a time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowdppo.models.base import Cond
from flowdppo.models.lora import add_lora, disabled_lora

# LoRA on the attention projections (both the image and the text stream of the joint blocks).
DEFAULT_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
]


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    """bf16 on a GPU that supports it, else fp16 on GPU, float32 on CPU (``None``/``"auto"``).

    Also accepts the config's names ``"float32"``, ``"bfloat16"``, ``"float16"``.
    """
    if isinstance(dtype, str) and dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if isinstance(dtype, torch.dtype):
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub repository id ``owner/name`` (dots allowed, as in
    ``black-forest-labs/FLUX.1-dev``), not as a path: no leading ``.``, ``/`` or ``~``, one
    slash, no ``..``. A folder of that name on disk is taken as the folder, before this check."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def load_pipeline(pipeline_cls: type, path_or_pipeline: Any, dtype: torch.dtype) -> Any:
    """Return a ``pipeline_cls`` instance from an object, a local folder or a cached hub id.

    Hub ids are looked up with ``local_files_only=True``: this never downloads and never hangs;
    a missing id raises ``FileNotFoundError`` naming the id and the command that caches it.
    """
    if isinstance(path_or_pipeline, pipeline_cls):
        return path_or_pipeline
    if not isinstance(path_or_pipeline, (str, Path)):
        raise TypeError(
            f"expected a {pipeline_cls.__name__}, a folder or a hub id, "
            f"got {type(path_or_pipeline).__name__}"
        )
    name = str(path_or_pipeline)
    if Path(name).expanduser().is_dir():
        return pipeline_cls.from_pretrained(str(Path(name).expanduser()), **_dtype_kwarg(dtype))
    if not is_hub_id(name):
        raise FileNotFoundError(f"pipeline folder {name!r} does not exist")
    try:
        return pipeline_cls.from_pretrained(name, local_files_only=True, **_dtype_kwarg(dtype))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{name!r} is neither a local folder nor a hub id cached on this machine "
            f"(loading with local_files_only=True failed: {type(err).__name__}). Pre-download it "
            f"with `hf download {name}` (or `huggingface-cli download {name}`), accepting the "
            "model licence on the hub first if it is gated, or pass the pipeline's local folder."
        ) from err


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` for diffusers that renamed ``torch_dtype`` (and warn about the old name)."""
    from diffusers.utils import deprecation_utils

    renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def move(module: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """``module.to(device[, dtype])``, casting only when some weight has another dtype."""
    if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
        return module.to(device=device, dtype=dtype)
    return module.to(device=device)


def scheduler_sigmas(
    scheduler: Any,
    num_inference_steps: int,
    *,
    sigmas: list[float] | None = None,
    mu: float | None = None,
) -> torch.Tensor:
    """Ask a (private copy of the) pipeline's scheduler for its sigmas, float32 [T + 1] ending at 0."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    fresh = type(scheduler).from_config(scheduler.config)  # never touch the pipeline's state
    kwargs: dict[str, Any] = {} if mu is None else {"mu": mu}
    if sigmas is None:
        fresh.set_timesteps(num_inference_steps, device="cpu", **kwargs)
    else:
        fresh.set_timesteps(sigmas=sigmas, device="cpu", **kwargs)
    out = fresh.sigmas.detach().to(torch.float32).clone()
    if out.shape != (num_inference_steps + 1,) or float(out[-1]) != 0.0:
        raise ValueError(
            f"{type(scheduler).__name__} returned sigmas of shape {tuple(out.shape)} ending at "
            f"{float(out[-1]):.4g}; expected [{num_inference_steps + 1}] ending at 0"
        )
    return out


def resolution_shift(image_seq_len: int, config: Any, default_max_shift: float) -> float:
    """Resolution-dependent shift ``mu``: linear in the number of image tokens.

    ``mu`` goes from ``base_shift`` at ``base_image_seq_len`` tokens to ``max_shift`` at
    ``max_image_seq_len`` tokens (the scheduler then applies ``exp(mu)`` as the shift).
    """
    lo_len = config.get("base_image_seq_len", 256)
    hi_len = config.get("max_image_seq_len", 4096)
    lo, hi = config.get("base_shift", 0.5), config.get("max_shift", default_max_shift)
    return lo + (hi - lo) * (image_seq_len - lo_len) / (hi_len - lo_len)


def freeze(*modules: nn.Module | None) -> None:
    """Frozen, eval-mode modules: text encoders and VAE never get gradients."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False).eval()


def prepare_transformer(
    transformer: nn.Module,
    *,
    lora_rank: int,
    lora_alpha: float,
    lora_target_modules: list[str] | None,
    full_finetune: bool,
    gradient_checkpointing: bool,
) -> nn.Module | None:
    """Make the transformer trainable in place; returns the frozen reference copy (full FT only).

    LoRA: adapters on ``lora_target_modules`` (default: attention projections), kept in float32
    even when the base weights are bf16/fp16 (peft casts activations to the adapter dtype).
    Full fine-tuning: all weights trainable in float32; the reference is a frozen copy.
    """
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if full_finetune:
        reference = copy.deepcopy(transformer).requires_grad_(False).eval()
        move(transformer, next(transformer.parameters()).device, torch.float32)
        transformer.requires_grad_(True)
        return reference
    # peft matches names by suffix; a target absent from some blocks (FLUX's single blocks have
    # no ``to_out``) is fine as long as it matches somewhere.
    targets = list(lora_target_modules or DEFAULT_LORA_TARGETS)
    add_lora(transformer, rank=lora_rank, alpha=lora_alpha, target_modules=targets)
    for param in transformer.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)
    return None


class PromptCache:
    """Per-prompt conditioning, computed once: ``get(prompts, encode)`` encodes only new prompts."""

    def __init__(self) -> None:
        self._rows: dict[str, Cond] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, prompts: list[str], encode: Any) -> Cond:
        """``encode(list[str]) -> Cond`` is called once, on the prompts not seen before."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("encode_prompts expects a non-empty list of strings")
        new = list(dict.fromkeys(p for p in prompts if p not in self._rows))
        if new:
            batch = encode(new)
            for i, prompt in enumerate(new):
                self._rows[prompt] = {k: v[i : i + 1].detach() for k, v in batch.items()}
        keys = self._rows[prompts[0]].keys()
        return {k: torch.cat([self._rows[p][k] for p in prompts]) for k in keys}


@contextmanager
def encoders_on(device: torch.device, offload: bool, *encoders: nn.Module | None) -> Iterator[None]:
    """Text encoders on ``device`` inside the context; back on the CPU afterwards if ``offload``."""
    live = [e for e in encoders if e is not None]
    if offload:
        for e in live:
            move(e, device)
    try:
        yield
    finally:
        if offload:
            for e in live:
                move(e, torch.device("cpu"))


def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Model latents [B, C, h, w] to images [B, 3, H, W] in [0, 1], the VAE in float32."""
    config = vae.config
    shift = config.shift_factor if config.get("shift_factor") is not None else 0.0
    x = latents.to(device=next(vae.parameters()).device, dtype=torch.float32)
    x = x / config.scaling_factor + shift
    with torch.no_grad():
        images = vae.decode(x, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def autocast_context(device: torch.device, dtype: torch.dtype, enabled: bool):
    """Autocast for full fine-tuning in half precision (float32 master weights); else nothing."""
    if not enabled or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextmanager
def reference_context(owner: Any) -> Iterator[None]:
    """Swap in the frozen reference: LoRA disabled, or the frozen copy for full fine-tuning."""
    if owner._reference is None:
        with disabled_lora(owner.transformer):
            yield
        return
    trained = owner.transformer
    owner.transformer = owner._reference
    try:
        yield
    finally:
        owner.transformer = trained
