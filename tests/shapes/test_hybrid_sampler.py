"""benchmarks/shapes_hybrid_sampler.py: the hybrid sampler's two ends are the policy's and the
base's own evaluation samples, and its middle is neither."""

from __future__ import annotations

from pathlib import Path

import torch
from benchmark_modules import load_benchmark
from trainer.tiny import build_tiny_checkpoint

from flowdppo.models.shapes import ShapesPolicy
from flowdppo.trainer.sampling import generate

hs = load_benchmark("shapes_hybrid_sampler")

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a white circle"]


def _policy(tmp_path: Path) -> ShapesPolicy:
    policy = ShapesPolicy.from_pretrained(
        build_tiny_checkpoint(tmp_path / "tiny.safetensors"), lora_rank=2, lora_alpha=4
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at 0 (policy = base): move it
        for name, p in policy.model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return policy


def test_hybrid_ends_are_the_policy_and_the_base_and_its_middle_is_neither(tmp_path) -> None:
    """τ = −1 is the policy's own evaluation samples, τ = 1 the base's (the adapter off), computed
    without the hybrid; an intermediate τ gives neither."""
    policy = _policy(tmp_path)
    kw = dict(steps=6, guidance_scale=2.0, seed=3, batch_size=2)  # two batches: cond per batch
    own = generate(policy, PROMPTS, **kw)
    with policy.reference():
        base = generate(policy, PROMPTS, **kw)
    assert (own - base).abs().max() > 1e-3  # the adapter matters

    def hybrid(tau: float) -> torch.Tensor:
        return generate(policy, PROMPTS, **kw, velocity=hs.hybrid_velocity(policy, tau, 2.0))

    torch.testing.assert_close(hybrid(-1.0), own)
    torch.testing.assert_close(hybrid(1.0), base)
    mid = hybrid(0.5)
    assert min((mid - own).abs().max(), (mid - base).abs().max()) > 1e-4
