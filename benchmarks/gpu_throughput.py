"""GPU throughput: rollout and update images/s and peak memory, Shapes to FLUX (random weights).

Cases (each on one device, bf16 weights; warm-up calls excluded from every figure):
- ``shapes``: the shipped Shapes base (3.7 M parameters) at the default config (batch 128, T = 10,
  CFG 3, LoRA r16 as ``flowdppo train``), plus a few real ``Trainer.step()`` iterations of the
  default run (rollout, rewards, updates; evaluation off).
- ``sd35m_lora`` / ``sd35m_full``: SD3.5-Medium's transformer (``SD3Transformer2DModel`` from its
  config, random weights, nothing downloaded) at 512² (latents 16×64×64), random prompt embeddings
  of the real shapes (154 tokens × 4096, pooled 2048) in place of the text encoders, CFG 4.5
  (batched: one call on 2B); LoRA r32/α64 on the attention projections (peft, the project's
  ``prepare_transformer``), or full fine-tuning (float32 master weights, bf16 autocast, the
  frozen reference copy in memory as in a run).
- ``flux_lora``: FLUX.1-dev's transformer (19 double + 38 single blocks, 3072 wide, guidance
  embedding: no CFG pass) at 512² (1024 packed image tokens), 512 T5 tokens, LoRA r32.

Rollout: ``flowdppo.core.sample`` (T = 10 steps, Flow-SDE η 0.7 on the trained steps); images/s
= samples per second of the denoising loop (no VAE decode, no text encoding). Update: per
micro-batch of (sample, step) pairs one ``recompute_step`` forward (with CFG where the model uses
it) and backward through ``compute_loss('flow_dppo')``, then an AdamW step; the same work as
``flowdppo.trainer.update`` per trained step. ``update img/s`` = pairs/s ÷ K with every
trainable step trained (K = T - 1: Flow-SDE's last step has std 0). Peak memory is
``torch.cuda.max_memory_allocated`` over the phase (the model's weights included).

    python benchmarks/gpu_throughput.py [--cases shapes,sd35m_lora,sd35m_full,flux_lora]
        [--json PATH] [--tiny]

``--tiny`` builds tiny configs of the same classes and runs the same code on whatever device
there is (the CPU here, under a minute). Without CUDA and without ``--tiny`` it prints one line
and exits 0. The table is printed as markdown and written as JSON to ``$OUT/gpu_throughput.json``
(when OUT is set) or ``--json``. On the GPU machine: ``bash benchmarks/gpu_run.sh``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flowdppo.core import LossInputs, compute_loss, recompute_step, sample, shifted_sigmas

T0 = time.perf_counter()

# SD3.5-Medium's transformer/config.json (stabilityai/stable-diffusion-3.5-medium).
SD35M_CONFIG: dict[str, Any] = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
SD35M_TINY = {
    **SD35M_CONFIG,
    **dict(
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
    ),
}
# FLUX.1-dev's transformer/config.json (black-forest-labs/FLUX.1-dev).
FLUX_CONFIG: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_TINY = {
    **FLUX_CONFIG,
    **dict(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        axes_dims_rope=(4, 6, 6),
    ),
}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


@dataclass
class Case:
    """One model and training mode: a velocity function over fixed random conditioning."""

    name: str
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B,...], sigma [B]) -> v
    latent_shape: tuple[int, ...]
    params: list[torch.nn.Parameter]  # trainable
    total_params: int
    sigmas: torch.Tensor  # [T + 1]
    rollout_batch: int
    micro_batch: int
    cfg_passes: int  # network sequences per sample and step (2: batched CFG)
    resolution: int
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sizes:
    """Iteration counts and shapes: the full run (GPU) or ``--tiny`` (CPU, seconds)."""

    tiny: bool
    steps: int = 10
    rollout_warmup: int = 1
    rollouts: int = 3
    update_warmup: int = 2
    updates: int = 8
    trainer_iters: int = 3

    @classmethod
    def make(cls, tiny: bool) -> Sizes:
        if tiny:
            return cls(True, steps=4, rollouts=1, update_warmup=1, updates=2, trainer_iters=1)
        return cls(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- the two measured phases ---------------------------------------------------------------------


def time_rollouts(case: Case, sizes: Sizes, device: torch.device):
    """Rollout images/s and peak GiB; returns the last rollout (its stored steps feed the update)."""
    b, t = case.rollout_batch, case.sigmas.numel() - 1
    train_steps = list(range(t - 1))  # every step with std > 0 (Flow-SDE's last has std 0)
    g = torch.Generator(device=device).manual_seed(0)

    def one():
        init = torch.randn(b, *case.latent_shape, generator=g, device=device)
        noise = torch.randn(b, len(train_steps), *case.latent_shape, generator=g, device=device)
        return sample(
            case.velocity, init, case.sigmas, eta=0.7, train_steps=train_steps, noise=noise
        )

    with torch.no_grad():
        for _ in range(sizes.rollout_warmup):
            out = one()
        sync(device)
        reset_peak(device)
        times = []
        for _ in range(sizes.rollouts):
            t0 = time.perf_counter()
            out = one()
            sync(device)
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return out, {"rollout_img_s": b / sec, "rollout_s": sec, "rollout_peak_gib": peak_gib(device)}


def _micro_step(case: Case, out, pairs: torch.Tensor, adv: torch.Tensor) -> float:
    """One forward + backward of ``pairs`` (flat sample * K + step ids), as the trainer's."""
    k = out.std.shape[1]
    i, s = pairs // k, pairs % k
    new = recompute_step(
        case.velocity,
        out.x[i, s],
        out.x_next[i, s],
        out.sigma[s],
        out.sigma_next[s],
        sampler="flow_sde",
        eta=0.7,
    )
    inp = LossInputs(
        log_prob=new.log_prob,
        log_prob_old=out.log_prob[i, s],
        advantages=adv[i],
        mean=new.mean,
        mean_old=out.mean[i, s],
        std=out.std[i, s],
    )
    loss = compute_loss("flow_dppo", inp, delta=1e-5, divergence="kl", reduction="mean").loss
    loss.backward()
    return float(loss.detach())


def time_updates(case: Case, out, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Update pairs/s and images/s (K trained steps each) with AdamW steps, and peak GiB."""
    opt = torch.optim.AdamW(case.params, lr=1e-6)
    b, k = out.std.shape
    adv = torch.randn(b, generator=torch.Generator().manual_seed(1)).to(device)
    order = torch.randperm(b * k, generator=torch.Generator().manual_seed(2)).to(device)
    m = case.micro_batch

    def step(u: int) -> None:
        lo = (u * m) % max(b * k - m + 1, 1)
        _micro_step(case, out, order[lo : lo + m], adv)
        torch.nn.utils.clip_grad_norm_(case.params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for u in range(sizes.update_warmup):  # includes AdamW's state allocation
        step(u)
    sync(device)
    reset_peak(device)
    t0 = time.perf_counter()
    for u in range(sizes.updates):
        step(sizes.update_warmup + u)
    sync(device)
    sec = time.perf_counter() - t0
    pairs_s = sizes.updates * m / sec
    return {
        "update_pairs_s": pairs_s,
        "update_img_s": pairs_s / k,
        "trained_steps_k": k,
        "update_peak_gib": peak_gib(device),
    }


# --- the models ------------------------------------------------------------------------------------


DTYPE: dict[str, torch.dtype] = {}  # "weights": set by --dtype (default: bf16 on CUDA, else fp32)


def _dtype(device: torch.device) -> torch.dtype:
    if "weights" in DTYPE:
        return DTYPE["weights"]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _build(cls, config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """A diffusers transformer with random weights, created on ``device`` in ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval()  # buffers made in float32 too


def _prepare(model, full: bool):
    """LoRA r32/α64 on the attention projections, or full fine-tuning (the project's code):
    the trainable parameters and, for full fine-tuning, the frozen reference copy."""
    from flowdppo.models._diffusers_common import prepare_transformer

    reference = prepare_transformer(
        model,
        lora_rank=32,
        lora_alpha=64.0,
        lora_target_modules=None,
        full_finetune=full,
        gradient_checkpointing=False,
    )
    return [p for p in model.parameters() if p.requires_grad], reference


def sd35m_case(full: bool, tiny: bool, sizes: Sizes, device: torch.device) -> Case:
    from diffusers import SD3Transformer2DModel

    dtype = _dtype(device)
    config = SD35M_TINY if tiny else SD35M_CONFIG
    res = 64 if tiny else 512
    model = _build(SD3Transformer2DModel, config, device, dtype)
    total = sum(p.numel() for p in model.parameters())
    params, reference = _prepare(model, full)
    # Full fine-tuning: float32 master weights, the forward under bf16 autocast (as the policy).
    autocast = full and dtype != torch.float32
    b = 4 if tiny else 8
    tokens, width = (8, config["joint_attention_dim"]) if tiny else (154, 4096)
    g = torch.Generator(device=device).manual_seed(3)
    embeds = torch.randn(2, tokens, width, generator=g, device=device).to(dtype)  # cond, uncond
    pooled = torch.randn(2, config["pooled_projection_dim"], generator=g, device=device).to(dtype)
    guidance = 4.5

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rows = torch.arange(2, device=device).repeat_interleave(n)  # [2n]: cond, then uncond
        with torch.autocast(device.type, dtype=dtype) if autocast else nullcontext():
            v = model(
                hidden_states=torch.cat([x, x]).to(dtype),
                timestep=torch.cat([sigma, sigma]) * 1000,
                encoder_hidden_states=embeds[rows],
                pooled_projections=pooled[rows],
                return_dict=False,
            )[0]
        v_c, v_u = v.float().chunk(2)
        return v_u + guidance * (v_c - v_u)

    side = res // 8
    return Case(
        name="sd35m_full" if full else "sd35m_lora",
        velocity=velocity,
        latent_shape=(16, side, side),
        params=params,
        total_params=total,
        sigmas=shifted_sigmas(sizes.steps, 3.0),
        rollout_batch=b,
        micro_batch=2 if tiny else 4,
        cfg_passes=2,
        resolution=res,
        notes="full FT: fp32 master + bf16 autocast, AdamW, frozen bf16 reference"
        if full
        else "LoRA r32",
        extra={"reference": reference},
    )


def flux_case(tiny: bool, sizes: Sizes, device: torch.device) -> Case:
    from diffusers import FluxTransformer2DModel

    from flowdppo.models.flux import image_positions, pack_latents, unpack_latents

    dtype = _dtype(device)
    config = FLUX_TINY if tiny else FLUX_CONFIG
    res = 64 if tiny else 512
    model = _build(FluxTransformer2DModel, config, device, dtype)
    total = sum(p.numel() for p in model.parameters())
    params, _ = _prepare(model, False)
    tokens, width = (8, config["joint_attention_dim"]) if tiny else (512, 4096)
    g = torch.Generator(device=device).manual_seed(4)
    embeds = torch.randn(1, tokens, width, generator=g, device=device).to(dtype)
    pooled = torch.randn(1, config["pooled_projection_dim"], generator=g, device=device).to(dtype)
    side = res // 8  # VAE latents 16 × side × side, packed 2×2 into 64-channel tokens
    txt_ids = torch.zeros(tokens, 3, device=device, dtype=dtype)
    img_ids = image_positions(side, side, device, dtype)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = model(
            hidden_states=pack_latents(x.to(dtype)),
            timestep=(sigma * 1000).to(dtype) / 1000,
            guidance=torch.full((n,), 3.5, device=device),
            pooled_projections=pooled.expand(n, -1),
            encoder_hidden_states=embeds.expand(n, -1, -1),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return unpack_latents(out.float(), side, side)

    return Case(
        name="flux_lora",
        velocity=velocity,
        latent_shape=(16, side, side),
        params=params,
        total_params=total,
        sigmas=shifted_sigmas(sizes.steps, 3.0),
        rollout_batch=2 if tiny else 4,
        micro_batch=2,
        cfg_passes=1,
        resolution=res,
        notes="LoRA r32; guidance-distilled (no CFG pass)",
    )


def _shapes_config(tiny: bool, steps: int) -> list[str]:
    over = ["eval.every=0", "train.save_every=100000", "train.max_iters=1000"]
    if tiny:
        over += [
            f"sampling.num_inference_steps={steps}",
            "sampling.prompts_per_iter=2",
            "sampling.group_size=4",
            "sampling.batch_size=8",
            "optim.micro_batch_size=8",
        ]
    return over


def shapes_case(tiny: bool, sizes: Sizes, device: torch.device) -> Case:
    """The shipped base as ``flowdppo train`` builds it (LoRA, default CFG and schedule)."""
    from flowdppo.config import load_config
    from flowdppo.trainer.build import build_policy

    cfg = load_config(None, _shapes_config(tiny, sizes.steps))
    policy = build_policy(cfg, device)
    b = 8 if tiny else 128
    prompts = ["two red circles", "a blue square above a green triangle"] * (b // 2)
    cond = policy.encode_prompts(prompts)
    g = cfg.sampling.guidance_scale

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return policy.velocity(x, sigma, {k: v[:n] for k, v in cond.items()}, g)

    return Case(
        name="shapes",
        velocity=velocity,
        latent_shape=tuple(policy.latent_shape),
        params=list(policy.trainable_parameters()),
        total_params=sum(p.numel() for p in policy.model.parameters()),
        sigmas=policy.sigmas(sizes.steps),
        rollout_batch=b,
        micro_batch=cfg.optim.micro_batch_size,
        cfg_passes=2 if g > 1 else 1,
        resolution=32,
        notes=f"shipped base, LoRA r{cfg.model.lora_rank}, CFG {g:g}",
    )


def shapes_trainer(tiny: bool, sizes: Sizes) -> dict[str, Any]:
    """Real ``Trainer.step()`` iterations of the default run (evaluation off): medians."""
    from flowdppo.config import load_config
    from flowdppo.trainer.trainer import Trainer

    cfg = load_config(None, _shapes_config(tiny, sizes.steps))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        trainer.step()  # warm-up
        rows = [trainer.step() for _ in range(sizes.trainer_iters)]
        trainer.logger.close()
        trainer.pool.shutdown(wait=True)
    n = cfg.sampling.prompts_per_iter * cfg.sampling.group_size

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in rows)

    return {
        "trainer_iter_s": med("time/iter_s"),
        "trainer_rollout_s": med("time/rollout_s"),
        "trainer_reward_wait_s": med("time/reward_wait_s"),
        "trainer_train_s": med("time/train_s"),
        "trainer_img_s": n / med("time/iter_s"),
        "trainer_samples": n,
    }


# --- running and reporting -------------------------------------------------------------------------


def run_case(name: str, tiny: bool, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    builders: dict[str, Callable[[], Case]] = {
        "shapes": lambda: shapes_case(tiny, sizes, device),
        "sd35m_lora": lambda: sd35m_case(False, tiny, sizes, device),
        "sd35m_full": lambda: sd35m_case(True, tiny, sizes, device),
        "flux_lora": lambda: flux_case(tiny, sizes, device),
    }
    t0 = time.perf_counter()
    case = builders[name]()
    row: dict[str, Any] = {
        "case": name,
        "params_total": case.total_params,
        "params_trainable": sum(p.numel() for p in case.params),
        "resolution": case.resolution,
        "batch": case.rollout_batch,
        "steps": case.sigmas.numel() - 1,
        "cfg_passes": case.cfg_passes,
        "micro_batch": case.micro_batch,
        "notes": case.notes,
        "build_s": time.perf_counter() - t0,
    }
    log(f"{name}: built ({row['params_total'] / 1e6:.1f} M parameters) in {row['build_s']:.1f}s")
    out, roll = time_rollouts(case, sizes, device)
    row.update(roll)
    log(f"{name}: rollout {roll['rollout_img_s']:.2f} img/s")
    row.update(time_updates(case, out, sizes, device))
    log(f"{name}: update {row['update_pairs_s']:.2f} pairs/s")
    del case, out
    free_memory(device)
    if name == "shapes":
        row.update(shapes_trainer(tiny, sizes))
        log(f"shapes: Trainer.step {row['trainer_iter_s']:.2f} s/iteration")
        free_memory(device)
    return row


def _fmt(v: Any, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | params (M) | trainable (M) | res | batch × T (CFG passes) | rollout img/s | "
        "rollout peak GiB | update pairs/s (micro) | update img/s (K) | update peak GiB | "
        "Trainer s/iter (img/s) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['error']} |" + " |" * 9)
            continue
        trainer = (
            f"{r['trainer_iter_s']:.2f} ({r['trainer_img_s']:.1f})"
            if "trainer_iter_s" in r
            else "—"
        )
        lines.append(
            f"| {r['case']} | {r['params_total'] / 1e6:.1f} | {r['params_trainable'] / 1e6:.2f} | "
            f"{r['resolution']}² | {r['batch']} × {r['steps']} ({r['cfg_passes']}) | "
            f"{_fmt(r['rollout_img_s'])} | {_fmt(r['rollout_peak_gib'])} | "
            f"{_fmt(r['update_pairs_s'])} ({r['micro_batch']}) | "
            f"{_fmt(r['update_img_s'])} ({r['trained_steps_k']}) | {_fmt(r['update_peak_gib'])} | "
            f"{trainer} |"
        )
    return "\n".join(lines)


def _quiet_diffusers() -> None:
    """No per-model warning that ``.to(dtype)`` casts modules (none is kept in float32 here)."""
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="shapes,sd35m_lora,sd35m_full,flux_lora")
    ap.add_argument("--json", default=None, help="JSON path (default: $OUT/gpu_throughput.json)")
    ap.add_argument("--tiny", action="store_true", help="tiny configs, any device (CPU smoke run)")
    ap.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="disable cuDNN's scaled-dot-product attention (its FLUX backward failed on an H200)",
    )
    ap.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default=None,
        help="diffusers weights (default: bfloat16 on CUDA, float32 on a CPU)",
    )
    ap.add_argument(
        "--skip-after-s",
        type=float,
        default=240.0,
        help="start no further case after this many seconds (the GPU budget)",
    )
    a = ap.parse_args(argv)
    if not a.tiny and not torch.cuda.is_available():
        print("no CUDA device: skipped (use --tiny for a CPU smoke run)", flush=True)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.no_cudnn_attention and device.type == "cuda":
        # cuDNN's fused attention backward failed on FLUX.1's joint attention (4,608 tokens,
        # bf16) on an H200 with torch 2.11 ("mha_graph.execute ... is_good()", then an illegal
        # memory access); the flash / memory-efficient kernels take over.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if a.dtype:
        DTYPE["weights"] = getattr(torch, a.dtype)
    _quiet_diffusers()
    sizes = Sizes.make(a.tiny)
    env = environment(device)
    log(
        f"device {env['device']}, torch {env['torch']}, diffusers {env['diffusers']}, tiny={a.tiny}"
    )
    rows: list[dict[str, Any]] = []
    for name in [c for c in a.cases.split(",") if c]:
        if time.perf_counter() - T0 > a.skip_after_s:
            rows.append({"case": name, "error": f"skipped: past --skip-after-s {a.skip_after_s:g}"})
            log(rows[-1]["error"])
            continue
        try:
            rows.append(run_case(name, a.tiny, sizes, device))
        except Exception as err:  # one case failing (out of memory, a missing module) ends only it
            rows.append({"case": name, "error": f"{type(err).__name__}: {err}"[:300]})
            log(f"{name}: FAILED {rows[-1]['error']}")
            free_memory(device)
    table = markdown(rows)
    print(table, flush=True)
    path = a.json or (
        str(Path(os.environ["OUT"]) / "gpu_throughput.json") if os.environ.get("OUT") else None
    )
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(
            json.dumps({"env": env, "tiny": a.tiny, "rows": rows, "markdown": table}, indent=1)
        )
        log(f"wrote {path}")
    return 1 if any("error" in r and not r["error"].startswith("skipped") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
