"""Pretrain the Shapes base model with rectified-flow matching (resumable, seeded).

Loss: ``E ||v_θ(x_σ, σ, prompt) - (ε - x0)||²`` with ``x_σ = (1-σ)·x0 + σ·ε``, σ ~ logit-normal(0, 1)
(SD3's choice; ``sigma_logit_mean`` shifts it toward high noise), x0 a fresh render of a random
training prompt, the prompt dropped to the null prompt with probability ``p_uncond`` (for
classifier-free guidance). Batch ``b`` of step ``k`` is a pure function of ``(seed, k)``, so a
resumed run sees exactly the data an uninterrupted run would.

Optional prior term (``prior_batch`` > 0): at σ = 1 the input ε holds nothing of x0, so the
minimiser of the loss there is ``v = ε - E[x0 | prompt]``: the model's layout prior. One sampled
x0 is a very noisy target for it (docs/experiments/spatial-relation.md: on position prompts,
knowing the relation word lowers the σ = 1 loss by 1.4%, so the base never learned it), and the mean of
``prior_scenes`` renders of the prompt is the same target with that many times less variance.
The term ``||v_θ(ε, 1, prompt) - (ε - mean x0)||²`` on ``prior_batch`` prompts per step has the
same minimiser as the flow-matching loss; it only lowers the variance of its gradient there.
``prior_categories`` draws its prompts from some categories only (``["position"]``: where the
prior depends on word order), and ``flow_weight`` = 0 trains on the term alone: the first stage
of the recipe that gives a base the relation (docs/shapes.md, "A base that reads the relation").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flowdppo.shapes.model import ShapesFlowModel, ShapesModelConfig, load_checkpoint, tokenize
from flowdppo.shapes.prompts import (
    CATEGORIES,
    MISCAPTIONED,
    NOISE_KINDS,
    PromptSpec,
    miscaption,
    sample_scenes,
    split_by_category,
)
from flowdppo.shapes.recipe import PretrainConfig
from flowdppo.shapes.render import render


def _check_recipe(cfg: PretrainConfig) -> None:
    """Refuse settings the batches cannot be drawn with, naming the field and the flag."""
    if cfg.prior_batch < 0 or cfg.prior_scenes < 1:
        raise ValueError(
            f"prior_batch must be >= 0 and prior_scenes >= 1, got {cfg.prior_batch} and "
            f"{cfg.prior_scenes} (--prior-batch, --prior-scenes)"
        )
    if not 0 <= cfg.caption_noise <= 1:
        raise ValueError(
            f"caption_noise (--caption-noise): a fraction in [0, 1], got {cfg.caption_noise}"
        )
    if cfg.caption_noise_kind not in NOISE_KINDS:
        raise ValueError(
            f"caption_noise_kind (--caption-noise-kind): one of {NOISE_KINDS}, "
            f"got {cfg.caption_noise_kind!r}"
        )
    if cfg.flow_weight < 0 or cfg.prior_weight < 0:
        raise ValueError(
            f"flow_weight and prior_weight must be >= 0, got {cfg.flow_weight} and "
            f"{cfg.prior_weight} (--flow-weight, --prior-weight)"
        )
    if cfg.flow_weight == 0 and (cfg.prior_batch == 0 or cfg.prior_weight == 0):
        raise ValueError(
            "flow_weight (--flow-weight) is 0 and the prior term is off (--prior-batch, "
            "--prior-weight): nothing to train on"
        )
    if cfg.prior_categories is not None and (
        not cfg.prior_categories or set(cfg.prior_categories) - set(CATEGORIES)
    ):
        raise ValueError(
            f"prior_categories (--prior-category): names in {CATEGORIES}, got {cfg.prior_categories}"
        )
    w = cfg.category_weights
    if w is None:
        return
    if set(w) - set(CATEGORIES) or any(not x >= 0 for x in w.values()):
        raise ValueError(
            f"category_weights (--category-weight): names in {CATEGORIES} with weights >= 0, "
            f"got {w}"
        )
    if sum(w.get(c, 1.0) for c in CATEGORIES) <= 0:
        raise ValueError(f"category_weights (--category-weight): must not all be 0, got {w}")


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr * final_lr_frac``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (
        cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))
    )


def _draw_prompts(
    rng: np.random.Generator,
    n: int,
    weights: dict[str, float] | None,
    by_cat: Mapping[str, Sequence[PromptSpec]],
) -> list[PromptSpec]:
    """n training prompts: a category each (uniform, or by ``weights``), then a prompt."""
    if weights is None:
        cats = rng.integers(0, len(CATEGORIES), n)
    else:
        w = np.array([weights.get(c, 1.0) for c in CATEGORIES], dtype=np.float64)
        cats = rng.choice(len(CATEGORIES), size=n, p=w / w.sum())
    return [by_cat[CATEGORIES[c]][rng.integers(len(by_cat[CATEGORIES[c]]))] for c in cats]


def _miscaptioned(
    specs: list[PromptSpec], noise: float, kind: str, rng: np.random.Generator
) -> list[PromptSpec]:
    """The scenes to render for ``specs`` under caption noise: each prompt of a category in
    ``MISCAPTIONED`` is replaced, with probability ``noise``, by a scene it gets wrong in the
    way ``kind`` names."""
    u = rng.random(len(specs))
    return [
        miscaption(s, rng, kind) if s.category in MISCAPTIONED and x < noise else s
        for s, x in zip(specs, u, strict=True)
    ]


def make_batch(step: int, cfg: PretrainConfig, by_cat: Mapping[str, Sequence[PromptSpec]]):
    """The training batch of ``step``: (x0 [B,3,32,32] in [-1,1], prompts, eps, sigma). The
    prompts are those drawn; the renders follow ``cfg.caption_noise`` (its draws come from a
    stream of their own, so with 0 the batch is the clean recipe's, bit for bit)."""
    rng = np.random.default_rng([cfg.seed, step])
    specs = _draw_prompts(rng, cfg.batch_size, cfg.category_weights, by_cat)
    scenes = _miscaptioned(
        specs, cfg.caption_noise, cfg.caption_noise_kind, np.random.default_rng([cfg.seed, step, 2])
    )
    x0 = render(sample_scenes(scenes, rng)) * 2 - 1
    drop = rng.random(cfg.batch_size) < cfg.p_uncond
    prompts = ["" if d else s.text for s, d in zip(specs, drop, strict=True)]
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    eps = torch.randn(x0.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen) + cfg.sigma_logit_mean)
    return x0, prompts, eps, sigma


def make_prior_batch(step: int, cfg: PretrainConfig, by_cat: Mapping[str, Sequence[PromptSpec]]):
    """The σ = 1 prior batch of ``step``: (ε [P,3,32,32], prompts, mean x0 [P,3,32,32] in [-1,1]).

    Prompts are drawn like the main batch's (category weights included, never dropped), or
    uniformly from ``prior_categories`` when it is set; the
    target of each is the mean of ``prior_scenes`` fresh renders. A pure function of (seed, step),
    from a stream of its own, so the main batch is the same with the term on or off.
    """
    rng = np.random.default_rng([cfg.seed, step, 1])
    weights = cfg.category_weights
    if cfg.prior_categories is not None:
        weights = {c: float(c in cfg.prior_categories) for c in CATEGORIES}
    specs = _draw_prompts(rng, cfg.prior_batch, weights, by_cat)
    k = cfg.prior_scenes
    scenes = _miscaptioned(
        [s for s in specs for _ in range(k)],
        cfg.caption_noise,
        cfg.caption_noise_kind,
        np.random.default_rng([cfg.seed, step, 3]),
    )
    x0 = render(sample_scenes(scenes, rng)) * 2 - 1
    target = x0.view(len(specs), k, *x0.shape[1:]).mean(1)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    eps = torch.randn(target.shape, generator=gen)
    return eps, [s.text for s in specs], target


def flow_loss(
    model: ShapesFlowModel,
    x0: torch.Tensor,
    prompts: list[str],
    eps: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """The rectified-flow loss ``||v_θ(x_σ, σ, prompt) - (ε - x0)||²``, x_σ = (1-σ)·x0 + σ·ε."""
    s = sigma[:, None, None, None]
    cond = model.encode_text(tokenize(prompts, model.cfg.max_tokens))
    v = model((1 - s) * x0 + s * eps, sigma, cond["text"], cond["mask"])
    return (v - (eps - x0)).pow(2).mean()


def prior_loss(
    model: ShapesFlowModel, eps: torch.Tensor, prompts: list[str], mean_x0: torch.Tensor
) -> torch.Tensor:
    """The σ = 1 prior term ``||v_θ(ε, 1, prompt) - (ε - mean x0)||²`` (module docstring): the
    flow loss at σ = 1 (where x_σ = ε) with the mean of renders for x0."""
    return flow_loss(model, mean_x0, prompts, eps, torch.ones(len(prompts)))


def _load_init(path: str, model_cfg: ShapesModelConfig) -> dict[str, torch.Tensor]:
    """Float32 weights of a Shapes checkpoint whose architecture must equal ``model_cfg``."""
    model, _ = load_checkpoint(path)
    if model.cfg != model_cfg:
        raise ValueError(
            f"init {path}: architecture {model.cfg.to_dict()} differs from the run's {model_cfg.to_dict()}"
        )
    return model.state_dict()


def _save_state(path: Path, step: int, model, ema, opt) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "model_config": model.cfg.to_dict(),
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint


def pretrain(
    out: str | Path, cfg: PretrainConfig | None = None, model_cfg: ShapesModelConfig | None = None
) -> Path:
    """Train (or resume) into ``out``; returns the path of the final ``model.safetensors``."""
    cfg, model_cfg = cfg or PretrainConfig(), model_cfg or ShapesModelConfig()
    _check_recipe(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = ShapesFlowModel(model_cfg)
    ema = ShapesFlowModel(model_cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path, step = out / "pretrain_state.pt", 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        saved = st.get("model_config")  # absent in states written before it was stored
        if saved is not None and saved != model_cfg.to_dict():
            diff = {
                k: (saved.get(k), v) for k, v in model_cfg.to_dict().items() if saved.get(k) != v
            }
            raise ValueError(
                f"{state_path}: this run was started with another model architecture; "
                f"(saved, requested) per field: {diff} (e.g. resume with the same --velocity-skip)"
            )
        (
            model.load_state_dict(st["model"]),
            ema.load_state_dict(st["ema"]),
            opt.load_state_dict(st["opt"]),
        )
        step = st["step"]
    elif cfg.init is not None:
        init = _load_init(cfg.init, model_cfg)
        model.load_state_dict(init)
        ema.load_state_dict(init)
    by_cat = split_by_category("train")
    log = (out / "pretrain_log.jsonl").open("a")
    last_save, t0 = time.time(), time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", unit="step")
    while step < cfg.steps:
        loss = torch.zeros(())
        if cfg.flow_weight > 0:
            loss = cfg.flow_weight * flow_loss(model, *make_batch(step, cfg, by_cat))
        if cfg.prior_batch > 0:
            loss_prior = prior_loss(model, *make_prior_batch(step, cfg, by_cat))
            loss = loss + cfg.prior_weight * loss_prior
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - cfg.ema_decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.write(
            json.dumps(
                {
                    "step": step,
                    "loss": loss.item(),
                    **({"loss_prior": loss_prior.item()} if cfg.prior_batch > 0 else {}),
                    "lr": lr_at(step - 1, cfg),
                    "time_s": time.time() - t0,
                }
            )
            + "\n"
        )
        if time.time() - last_save > cfg.checkpoint_every_s or step == cfg.steps:
            log.flush()
            _save_state(state_path, step, model, ema, opt)
            last_save = time.time()
    bar.close()
    for name, net in (("model", model), ("model_ema", ema)):
        save_shapes_checkpoint(net.state_dict(), model_cfg, cfg, out / f"{name}.safetensors")
    (out / "config.json").write_text(
        json.dumps({"model": model_cfg.to_dict(), "recipe": asdict(cfg)}, indent=2)
    )
    return out / "model.safetensors"


def save_shapes_checkpoint(
    state: dict[str, torch.Tensor],
    model_cfg: ShapesModelConfig,
    cfg: PretrainConfig,
    path: str | Path,
) -> None:
    """Write float16 weights with the architecture, the recipe and the recommended sampling
    (``shift``, ``guidance_scale``) as safetensors metadata: what ``ShapesPolicy`` loads."""
    from safetensors.torch import save_file

    meta = {
        "model": json.dumps(model_cfg.to_dict()),
        "recipe": json.dumps(asdict(cfg)),
        "sampling": json.dumps(
            {"shift": cfg.sample_shift, "guidance_scale": cfg.sample_guidance_scale}
        ),
    }
    save_file(
        {k: t.detach().half().contiguous() for k, t in state.items()}, str(path), metadata=meta
    )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Pretrain the Shapes base model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=PretrainConfig.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    pretrain(a.out, PretrainConfig(steps=a.steps, seed=a.seed, threads=a.threads))
