"""Deterministic ODE samples of any policy: the sampler behind evaluation, ``flowdppo sample``
and the Shapes evaluation.

Sample ``j`` starts from noise seeded by ``(seed, j)`` whatever the batching, so every call with
the same prompts and seed sees the same noise, on every model.

Inside ``step_progress(...)`` every denoising step of ``generate`` (and of any loop that calls
``counted``) moves one progress bar, whose ETA is then that of the steps announced so far: the
trainer shows its evaluations this way, which take minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from tqdm import tqdm

from flowdppo.core import sample

_BARS: list[Any] = []  # the bar of the innermost step_progress, if any


@contextmanager
def step_progress(desc: str, enabled: bool, file: Any = None) -> Iterator[Any]:
    """A progress bar over the denoising steps run inside (``generate``, ``counted``), with an
    ETA; off when ``enabled`` is False or ``file`` (default stderr) is not a terminal."""
    off = None if enabled else True  # None: tqdm turns it off on a file that is not a terminal
    bar = tqdm(total=0, desc=desc, unit="step", disable=off, leave=False, file=file)
    _BARS.append(bar)
    try:
        yield bar
    finally:
        _BARS.remove(bar)
        bar.close()


def counted(fn: Callable[..., torch.Tensor], calls: int) -> Callable[..., torch.Tensor]:
    """``fn`` moving the active ``step_progress`` bar by one per call; ``calls`` (the calls
    about to be made) is added to its total first. ``fn`` itself when no bar is active."""
    if not _BARS:
        return fn
    bar = _BARS[-1]
    bar.total += calls
    bar.refresh()

    def call(*args: Any) -> torch.Tensor:
        out = fn(*args)
        bar.update(1)
        return out

    return call


@torch.no_grad()
def generate(
    policy: Any,
    prompts: list[str],
    *,
    steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int = 256,
    progress: bool = False,
    velocity: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """ODE samples of ``prompts``: images [N, 3, H, W] in [0, 1] (videos: [N, F, 3, H, W]); noise
    of sample j seeded (seed, j).

    ``velocity(x, sigma, cond)`` replaces the policy's own evaluation velocity (``cond``: the
    batch's encoded prompts), for samplers built from the policy, e.g. one that switches to the
    reference model at some σ (``benchmarks/shapes_hybrid_sampler.py``). The policy's own is its
    ``evaluation_velocity(sigmas, guidance_scale)`` when it has one (SD3.5: skip-layer guidance,
    ``eval.skip_guidance_layers``), else its CFG ``velocity``."""
    sigmas = policy.sigmas(steps)
    field = velocity or evaluation_velocity(policy, sigmas, guidance_scale)
    field = counted(field, -(-len(prompts) // batch_size) * steps)  # one call per step
    out = []
    for lo in tqdm(
        range(0, len(prompts), batch_size), desc="sampling", disable=not progress, unit="batch"
    ):
        chunk = prompts[lo : lo + batch_size]
        noise = torch.stack(
            [
                torch.randn(
                    *policy.latent_shape,
                    generator=torch.Generator().manual_seed(seed * 1_000_003 + j),
                )
                for j in range(lo, lo + len(chunk))
            ]
        ).to(policy.device)
        cond = policy.encode_prompts(chunk)
        vel = lambda x, s, c=cond: field(x, s, c)  # noqa: E731
        out.append(policy.decode(sample(vel, noise, sigmas, sampler="ode").latents).cpu())
    return torch.cat(out)


def evaluation_velocity(
    policy: Any, sigmas: torch.Tensor, guidance_scale: float
) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
    """The velocity ``(x, sigma, cond) -> v`` of evaluation sampling over ``sigmas``: the
    policy's ``evaluation_velocity`` when it defines one, else ``velocity`` with CFG."""
    own = getattr(policy, "evaluation_velocity", None)
    if own is not None:
        return own(sigmas, guidance_scale)
    return lambda x, s, c: policy.velocity(x, s, c, guidance_scale)
