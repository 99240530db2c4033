"""LoRA on any ``nn.Module``, shared by every adapter (Shapes, SD3, FLUX).

A thin layer over peft's ``inject_adapter_in_model``: the module keeps its own class and
``forward`` (no ``PeftModel`` wrapper), one adapter named ``"default"`` is injected, and
everything but the LoRA weights is frozen. The reference policy of docs/algorithm.md §4 is the same
module with the adapter disabled (``disabled_lora``), so no second copy of the network exists.

Keys of ``lora_state_dict`` are the module's own parameter names
(``blocks.0.attn.to_q.lora_A.default.weight``); they are meant for checkpoints of this project.
The diffusers export format (no adapter name, ``transformer.`` prefix, rank/alpha metadata) is
produced in ``flowdppo.models.export``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from flowdppo.models.base import load_parameters

ADAPTER_NAME = "default"


def _lora_config(rank: int, alpha: float, target_modules: list[str], dropout: float):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        init_lora_weights=True,  # B = 0: the policy starts exactly at the base model
    )


def add_lora(
    module: nn.Module,
    *,
    rank: int,
    alpha: float,
    target_modules: list[str],
    dropout: float = 0.0,
) -> nn.Module:
    """Inject one LoRA adapter into ``module`` in place; freeze all non-LoRA parameters.

    ``target_modules``: peft names (suffixes of module names, e.g. ``["to_q", "to_k"]``) of the
    ``nn.Linear``/``nn.Conv2d`` layers to adapt. The scale applied to ``B·A`` is
    ``alpha / rank``. Returns ``module`` itself (same class, same ``forward``).
    """
    if rank <= 0:
        raise ValueError(f"add_lora: rank must be positive, got {rank}")
    if alpha <= 0:
        raise ValueError(f"add_lora: alpha must be positive, got {alpha}")
    if not target_modules:
        raise ValueError("add_lora: target_modules is empty; name the layers to adapt")
    if has_lora(module):
        raise ValueError("add_lora: module already has a LoRA adapter")
    from peft import inject_adapter_in_model

    config = _lora_config(rank, alpha, target_modules, dropout)
    try:
        inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if n})
        raise ValueError(
            f"add_lora: could not place LoRA on target_modules={list(target_modules)}: {err}. "
            f"Leaf names in this module include: {names[:40]}"
        ) from err
    for name, param in module.named_parameters():
        param.requires_grad_(_is_lora_name(name))
    return module


def _is_lora_name(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


def has_lora(module: nn.Module) -> bool:
    """Whether ``module`` holds LoRA layers injected by peft."""
    return any(_is_lora_name(n) for n, _ in module.named_parameters())


def lora_config(module: nn.Module):
    """The peft ``LoraConfig`` of the injected adapter (rank, alpha, target modules)."""
    configs = getattr(module, "peft_config", None)
    if not configs or ADAPTER_NAME not in configs:
        raise ValueError("lora_config: module has no LoRA adapter (call add_lora first)")
    return configs[ADAPTER_NAME]


def lora_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The LoRA parameters of ``module``, in a stable order."""
    for name, param in module.named_parameters():
        if _is_lora_name(name):
            yield param


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights only, keyed by parameter name, detached (shares storage)."""
    sd = {n: p.detach() for n, p in module.named_parameters() if _is_lora_name(n)}
    if not sd:
        raise ValueError("lora_state_dict: module has no LoRA parameters (call add_lora first)")
    return sd


def set_lora_state_dict(module: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load LoRA weights saved by ``lora_state_dict``; keys and shapes must match exactly."""
    params = {n: p for n, p in module.named_parameters() if _is_lora_name(n)}
    load_parameters(params, sd, "set_lora_state_dict")


def _tuner_layers(module: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def disabled_lora(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as its base model (LoRA bypassed) inside the context.

    ``requires_grad`` flags are restored on exit (peft's toggle would otherwise change them), so
    an optimizer built before entering the context keeps training the same parameters.
    """
    layers = _tuner_layers(module)
    if not layers:
        raise ValueError("disabled_lora: module has no LoRA adapter (call add_lora first)")
    flags = {id(p): p.requires_grad for p in module.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p in module.parameters():
            p.requires_grad_(flags.get(id(p), p.requires_grad))


def target_name(module: str) -> str:
    """The peft target name of a module path: its last name (``...attn.to_q`` -> ``to_q``), a
    trailing index kept (``...attn.to_out.0`` -> ``to_out.0``)."""
    parts = module.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
