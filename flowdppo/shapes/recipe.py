"""The recipe of a Shapes pretraining run (``flowdppo.shapes.pretrain``; saved with the result).

Each field once, with its type, default and help; the fields with ``flag`` are the options of
``flowdppo shapes pretrain`` (``flowdppo.config.flags``: ``caption_noise`` → ``--caption-noise``).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowdppo.config.flags import positive_int, typed_field
from flowdppo.shapes.prompts import NOISE_KINDS


@dataclass
class PretrainConfig:
    """Recipe of the Shapes pretraining run (saved with the result)."""

    steps: int = typed_field(2400, "optimizer steps", flag=True, type=positive_int)
    batch_size: int = typed_field(128, "renders per step")
    lr: float = typed_field(5e-4, "peak learning rate", flag=True)
    warmup_steps: int = typed_field(100, "linear warm-up steps to the peak learning rate")
    final_lr_frac: float = typed_field(0.1, "cosine decay to lr * final_lr_frac")
    weight_decay: float = typed_field(0.0, "AdamW weight decay")
    grad_clip: float = typed_field(1.0, "clip of the gradient norm")
    ema_decay: float = typed_field(0.995, "decay of the EMA weights (the shipped weights)")
    p_uncond: float = typed_field(0.1, "probability of the null prompt (for guidance)")
    sigma_logit_mean: float = typed_field(
        0.0,
        "location of the logit-normal σ distribution, σ ~ sigmoid(N(mean, 1)) (SD3's; 0: centred "
        "at σ = 0.5; > 0: more high-noise training, where the layout is decided)",
        flag=True,
    )
    seed: int = typed_field(
        0, "seed of the batches (batch k is a function of (seed, k))", flag=True
    )
    threads: int = typed_field(1, "torch CPU threads", flag=True)
    checkpoint_every_s: float = typed_field(120.0, "seconds between resumable checkpoints")
    init: str | None = typed_field(
        None,
        "continue from a Shapes .safetensors (e.g. the shipped base): model and EMA start from "
        "its weights, the optimizer fresh (continued pretraining)",
        flag=True,
    )
    category_weights: dict[str, float] | None = typed_field(
        None,
        "relative weight of a prompt category in each batch (others weigh 1; repeatable; none: "
        "uniform, as the shipped base's stages were drawn; position=3 puts 3/8 of every batch on "
        "position prompts)",
        flag="--category-weight",
        metavar="CATEGORY=W",
    )
    prior_batch: int = typed_field(
        0,
        "prompts per step of the σ = 1 prior term, whose target is a mean of renders (0 = off; "
        "flowdppo.shapes.pretrain's docstring)",
        flag=True,
    )
    prior_scenes: int = typed_field(16, "renders averaged into each prior target", flag=True)
    prior_weight: float = typed_field(
        1.0, "weight of the prior term beside the flow-matching loss", flag=True
    )
    prior_categories: list[str] | None = typed_field(
        None,
        "draw the prior term's prompts from this category only (repeatable; default: like the "
        "main batch; position: where the prior depends on the word order)",
        flag="--prior-category",
        metavar="CATEGORY",
    )
    flow_weight: float = typed_field(
        1.0,
        "weight of the flow-matching loss (0: the prior term alone, skipping the main batch: the "
        "first stage of a staged recipe, docs/experiments/spatial-relation.md)",
        flag=True,
    )
    sample_shift: float = typed_field(
        1.0,
        "recommended sampling shift of the result, written into its metadata (docs/shapes.md, "
        '"The base model")',
    )
    sample_guidance_scale: float = typed_field(
        3.0, "recommended CFG of the result, written into its metadata"
    )
    caption_noise: float = typed_field(
        0.0,
        "fraction of two_object/color_attr/counting/position training images rendered from a "
        "scene their prompt gets wrong (noisy captions, as web alt-text is wrong; 0 = clean; "
        'docs/shapes.md, "Noisy captions")',
        flag=True,
    )
    caption_noise_kind: str = typed_field(
        "detail",
        "what a noisy caption gets wrong: one compositional detail (a count off by one, the "
        "opposite relation, swapped colours, the first object twice) or an object it does not "
        "mention (the image holds one more)",
        flag=True,
        choices=NOISE_KINDS,
    )
