"""Plumbing shared by the diffusers adapters (``sd3.py``, ``flux.py``).

What lives here is the part of a policy that does not depend on the model family: loading a
pipeline (folder, cached hub id or in-memory object), choosing the precision, LoRA or full
fine-tuning of the transformer, the per-prompt embedding cache (LRU within a byte budget), the
scheduler's sigmas, the float32 VAE decode and the reference-model context. Each family adapter adds only its prompt
encoding and its transformer call.

Nothing here re-implements the diffusers denoising loop: the rollout loop is
``flowdppo.core.rollout`` and each adapter answers one velocity query at a time.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowdppo.models.base import Cond
from flowdppo.models.lora import add_lora, disabled_lora

# LoRA on the attention projections of both streams of the joint blocks, the context stream's
# output projection (to_add_out) included, as Flow-GRPO's and Flow-Factory's SD3/FLUX defaults
# adapt: without it the text tokens' attention output, which the next block reads, stays frozen.
DEFAULT_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
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


MIB = 2**20
DEFAULT_PROMPT_CACHE_MB = 2048.0
PROMPT_CACHE_DEVICES = ("device", "cpu")


def cond_nbytes(cond: Cond) -> int:
    """Bytes held by the tensors of ``cond`` (numel × element size, summed)."""
    return sum(t.numel() * t.element_size() for t in cond.values())


class PromptCache:
    """Per-prompt conditioning within a byte budget, least recently used out first.

    ``get(prompts, encode)`` runs ``encode`` once, on the distinct prompts not held, and returns
    the rows of every prompt stacked on ``device``. Each held row owns its storage (a copy, not
    a view of the encoded batch: evicting it frees its bytes). ``max_bytes`` 0: nothing is held,
    every call encodes; a row larger than the whole budget is not held. ``store_device`` (CPU
    keeps the rows off the accelerator; they are copied to ``device`` on use) defaults to
    ``device``. ``stats()`` counts hits and misses per distinct prompt of a call.
    """

    def __init__(
        self, max_bytes: int, device: torch.device, store_device: torch.device | None = None
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"prompt cache: max_bytes must be >= 0 (0: no cache), got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.device = torch.device(device)
        self.store_device = self.device if store_device is None else torch.device(store_device)
        self._rows: OrderedDict[str, Cond] = OrderedDict()  # least recently used first
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, prompts: list[str], encode: Any) -> Cond:
        """``encode(list[str]) -> Cond`` ([n, ...] per key) is called once, on the new prompts."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("encode_prompts expects a non-empty list of strings")
        distinct = list(dict.fromkeys(prompts))
        rows: dict[str, Cond] = {}
        for prompt in distinct:
            if prompt in self._rows:
                self._rows.move_to_end(prompt)
                rows[prompt] = self._rows[prompt]
        new = [p for p in distinct if p not in rows]
        self.hits, self.misses = self.hits + len(rows), self.misses + len(new)
        if new:
            batch = encode(new)
            for i, prompt in enumerate(new):
                rows[prompt] = {k: v[i].detach() for k, v in batch.items()}
        # Stacked before any insertion or eviction: a call with more prompts than the budget
        # holds still gets every row.
        on_device = {p: {k: t.to(self.device) for k, t in row.items()} for p, row in rows.items()}
        keys = on_device[prompts[0]].keys()
        out = {k: torch.stack([on_device[p][k] for p in prompts]) for k in keys}  # [B, ...]
        for prompt in new:
            self._insert(prompt, rows[prompt])
        return out

    def _insert(self, prompt: str, row: Cond) -> None:
        size = cond_nbytes(row)
        if size > self.max_bytes:  # also max_bytes 0: no cache
            return
        self._rows[prompt] = {k: t.to(self.store_device, copy=True) for k, t in row.items()}
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._rows.popitem(last=False)
            self._bytes -= cond_nbytes(old)
            self.evictions += 1

    def stats(self) -> dict[str, int]:
        """Counters since construction: ``hits``/``misses`` (distinct prompts of a call found /
        encoded), ``evictions``; and now: ``entries``, ``bytes`` held, ``max_bytes``."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "entries": len(self._rows),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
        }


def prompt_cache_metrics(
    before: dict[str, int] | None,
    after: dict[str, int] | None,
    reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
) -> dict[str, float]:
    """``cache/*`` metrics of the lookups between two ``cache_stats()`` snapshots.

    ``cache/prompt_hit_rate`` = Σ hits / Σ (hits + misses) and ``cache/prompt_evictions`` = Σ
    evictions, summed over processes; ``cache/prompt_mb`` = bytes held at ``after``, mean over
    processes, / 2^20. ``reduce(t, "sum")`` sums a tensor over processes (None: one process).
    No snapshot (a policy without a cache): {}. No lookup in between: hit rate NaN.
    """
    if before is None or after is None:
        return {}
    delta = [float(after[k] - before[k]) for k in ("hits", "misses", "evictions")]
    totals = torch.tensor([*delta, float(after["bytes"]), 1.0], dtype=torch.float64)
    if reduce is not None:
        totals = reduce(totals, "sum")
    hits, misses, evictions, held, processes = totals.tolist()
    return {
        "cache/prompt_hit_rate": hits / (hits + misses) if hits + misses else float("nan"),
        "cache/prompt_mb": held / processes / MIB,
        "cache/prompt_evictions": evictions,
    }


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
    with torch.inference_mode():  # no autograd bookkeeping at all: images never need a gradient
        images = vae.decode(x, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)  # outside: a normal tensor, not an inference one


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
