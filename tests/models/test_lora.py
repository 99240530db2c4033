"""flowdppo.models.lora on a tiny nn.Module: injection, freezing, state dicts, disabling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowdppo.models.lora import (
    add_lora,
    disabled_lora,
    has_lora,
    lora_config,
    lora_parameters,
    lora_state_dict,
    set_lora_state_dict,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = nn.Linear(8, 8)
        self.to_v = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.to_q(x)) + self.to_v(x))


def _tiny_with_lora(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return add_lora(Tiny(), rank=4, alpha=8, target_modules=["to_q", "to_v"])


def _perturb(module: nn.Module) -> None:
    with torch.no_grad():
        for p in lora_parameters(module):
            p.add_(0.1 * torch.randn_like(p))


def test_add_lora_keeps_class_and_output_and_freezes_base() -> None:
    torch.manual_seed(0)
    base = Tiny()
    x = torch.randn(3, 8)
    y0 = base(x)
    module = add_lora(base, rank=4, alpha=8, target_modules=["to_q", "to_v"])
    assert module is base and isinstance(module, Tiny) and has_lora(module)
    # B is initialised to zero: the adapted module starts exactly at the base model.
    torch.testing.assert_close(module(x), y0, rtol=0, atol=0)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert not any("out." in n for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"to_q", "to_v"}
    cfg = lora_config(module)
    assert cfg.r == 4 and cfg.lora_alpha == 8


def test_state_dict_roundtrip_reproduces_outputs() -> None:
    src = _tiny_with_lora(0)
    _perturb(src)
    dst = _tiny_with_lora(0)  # same base weights, fresh (zero-B) LoRA
    x = torch.randn(5, 8)
    assert not torch.allclose(src(x), dst(x))
    sd = lora_state_dict(src)
    assert all(".lora_" in k for k in sd)
    set_lora_state_dict(dst, sd)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_set_lora_state_dict_rejects_mismatched_keys_and_shapes() -> None:
    module = _tiny_with_lora()
    sd = lora_state_dict(module)
    key = next(iter(sd))
    with pytest.raises(KeyError, match="missing"):
        set_lora_state_dict(module, {k: v for k, v in sd.items() if k != key})
    with pytest.raises(ValueError, match="shape"):
        set_lora_state_dict(module, {**sd, key: torch.zeros(1)})


def test_disabled_lora_gives_base_model_and_restores_flags() -> None:
    torch.manual_seed(0)
    base = Tiny()
    x = torch.randn(3, 8)
    y_base = base(x).detach()
    module = add_lora(base, rank=4, alpha=8, target_modules=["to_q", "to_v"])
    _perturb(module)
    y_lora = module(x).detach()
    assert not torch.allclose(y_lora, y_base)
    flags = [p.requires_grad for p in module.parameters()]
    with disabled_lora(module):
        torch.testing.assert_close(module(x), y_base, rtol=0, atol=0)
    torch.testing.assert_close(module(x), y_lora, rtol=0, atol=0)
    assert [p.requires_grad for p in module.parameters()] == flags


def test_only_lora_gets_gradients_and_scale_is_alpha_over_rank() -> None:
    module = _tiny_with_lora()
    _perturb(module)
    module(torch.randn(4, 8)).pow(2).sum().backward()
    for name, p in module.named_parameters():
        assert (p.grad is not None) == (".lora_" in name), name
    # The delta on to_q equals (alpha / rank) · B @ A.
    layer = module.to_q
    x = torch.randn(2, 8)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + 2.0 * x @ a.T @ b.T
    torch.testing.assert_close(layer(x), expected)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="rank"):
        add_lora(Tiny(), rank=0, alpha=1, target_modules=["to_q"])
    with pytest.raises(ValueError, match="target_modules"):
        add_lora(Tiny(), rank=2, alpha=1, target_modules=["no_such_layer"])
    with pytest.raises(ValueError, match="no LoRA"):
        lora_state_dict(Tiny())
    with pytest.raises(ValueError, match="no LoRA"), disabled_lora(Tiny()):
        pass
