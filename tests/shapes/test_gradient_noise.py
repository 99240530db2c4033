"""benchmarks/shapes_gradient_noise.py: the low-frequency log-prob, parameter groups, the noise scale."""

from __future__ import annotations

import torch
from benchmark_modules import load_benchmark

from flowdppo.core.sde import gaussian_log_prob

gn = load_benchmark("shapes_gradient_noise")


def test_block_coordinates_of_white_noise_are_white_and_block_one_is_the_full_log_prob() -> None:
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(4000, 3, 32, 32, generator=g), torch.full((4000,), 0.6)
    x = mean + std[:, None, None, None] * torch.randn(4000, 3, 32, 32, generator=g)
    coords = torch.nn.functional.avg_pool2d(x - mean, 8) * 8  # [4000, 3, 4, 4]
    assert abs(coords.std().item() - 0.6) < 0.01  # orthonormal: the step std carries over
    assert abs(torch.corrcoef(coords.flatten(1).T[:2])[0, 1].item()) < 0.05  # independent blocks
    # block 1 is the full per-dimension log-density up to its constant
    const = gaussian_log_prob(x, mean, std) - gn._lowpass_log_prob(x, mean, std, 1)
    torch.testing.assert_close(const, -torch.log(std) - 0.5 * torch.log(torch.tensor(2 * torch.pi)))


def test_parameter_groups_drop_the_block_index() -> None:
    assert gn._param_group("blocks.3.qkv.weight") == "blocks.qkv"
    assert gn._param_group("pool_mlp.0.bias") == "pool_mlp"
    assert gn._param_group("img_pos") == "img_pos"


def test_noise_scale_of_known_signal_and_noise() -> None:
    """g_i = s + noise with |s|² = 1 and tr Σ = 8 per 16-sample estimate: B = 16 · 8 / 1 = 128."""
    g = torch.Generator().manual_seed(0)
    s = torch.zeros(8, dtype=torch.float64)
    s[0] = 1.0
    gs = s + torch.randn(20_000, 8, generator=g, dtype=torch.float64)
    line = gn._report("x", gs, 16)
    assert "|s|^2/trΣ +0.12" in line  # 1/8 = 0.125
    b = float(line.rsplit("≈ ", 1)[1].replace(",", ""))
    assert 118 < b < 138


def test_text_grad_velocity_is_the_same_field_and_reaches_the_text_encoder() -> None:
    from flowdppo.models.shapes import ShapesPolicy

    full = ShapesPolicy.from_pretrained(full_finetune=True)
    full.model.text.requires_grad_(True)  # what --by-group --text-encoder does
    texts = ["a red square and a green circle", "three blue triangles"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.9)
    cached, with_grad = (
        gn._velocity(full, texts)(x, sigma),
        gn._velocity(full, texts, True)(x, sigma),
    )
    torch.testing.assert_close(with_grad, cached)  # the same velocity, only differentiable
    text = list(full.model.text.parameters())
    # The cached encoding reaches no text-encoder parameter; the re-encoded one reaches them.
    none = torch.autograd.grad(cached.square().sum(), text, allow_unused=True)
    assert all(g is None for g in none)
    grads = torch.autograd.grad(with_grad.square().sum(), text, allow_unused=True)
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
