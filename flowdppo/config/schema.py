"""The typed run configuration: one dataclass per concern, each field once with its help.

Every field has a type, a default and ``help`` metadata (``docs/config.md`` is generated from
it by ``flowdppo.config.docs``). ``validate()`` checks values eagerly and names the
field and the value; ``flowdppo.config.load`` rejects unknown keys and wrong types.
Defaults are the Shapes + Flow-DPPO recipe of ``docs/tuning.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (and optional ``choices``) in the metadata."""
    if isinstance(default, (list, dict)):

        def factory(d: Any = default) -> Any:
            return type(d)(d)

        return field(default_factory=factory, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and the source."""


def _check(cond: bool, key: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


# The families whose guidance has a negative branch that a prompt can set (model.negative_prompt).
NEGATIVE_PROMPT_FAMILIES = ("sd3", "flux", "qwen_image", "wan")


@dataclass
class ModelConfig:
    family: str = _f(
        "shapes",
        "model family: shapes | sd3 | flux | qwen_image | flux2_klein | wan (text-to-video)",
        choices=("shapes", "sd3", "flux", "qwen_image", "flux2_klein", "wan"),
    )
    pretrained: str | None = _f(
        None, "weights: a local folder or cached hub id (shapes: None = the shipped base)"
    )
    lora_rank: int = _f(16, "LoRA rank (ignored with full_finetune)")
    lora_alpha: float = _f(32.0, "LoRA alpha; the update is scaled by alpha / rank")
    lora_target_modules: list[str] | None = _f(
        None,
        "module names to adapt (None: the family's attention/MLP default); layers of the frozen "
        "text encoder are refused (prompts are encoded once, without gradients)",
    )
    full_finetune: bool = _f(
        False, "train all transformer weights instead of LoRA (reference = frozen copy)"
    )
    dtype: str = _f(
        "auto",
        "weights dtype: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (big models)")
    compile: bool = _f(
        False,
        "torch.compile the denoising network in place (weights and checkpoints unchanged; "
        "Shapes on 2 CPU threads: 1.3x faster iterations after ~1 min of compiling, "
        "benchmarks/compile_speed.py)",
    )
    offload_text_encoders: bool = _f(False, "move text encoders to CPU after prompts are cached")
    resolution: int | None = _f(
        None, "image side in pixels (diffusers models; None = model default)"
    )
    max_sequence_length: int | None = _f(
        None,
        "text tokens of the T5 encoder (diffusers models; None = 256 for SD3, 512 for FLUX; "
        "qwen_image, flux2_klein: tokens of the Qwen encoder, None = 512)",
    )
    negative_prompt: str | None = _f(
        None,
        "negative prompt of CFG for every prompt without its own (a .jsonl prompt file's "
        "negative_prompt field), in rollouts and evaluation: sd3 (CFG, guidance_scale > 1), flux "
        "(true CFG, model.true_cfg_scale > 1), qwen_image (true CFG), wan (CFG); None = the "
        "family's default: '' (the empty prompt, as the pipelines without one), ' ' for "
        "qwen_image (its model card's)",
    )
    prompt_cache_mb: float = _f(
        2048.0,
        "budget in MiB of the prompt-embedding cache on the device, per process (diffusers "
        "models; least recently used prompts evicted first; 0 = no cache). A prompt takes 2.6 MiB "
        "(SD3.5) / 4.0 MiB (FLUX.1) in bf16 at the default max_sequence_length, so 2048 holds 786 "
        "/ 511 prompts (docs/models.md); below one iteration's distinct prompts, updates re-encode",
    )
    num_frames: int | None = _f(
        None, "frames per video (wan: 4k + 1; None = 81, WanPipeline's default)"
    )
    guidance_scale_2: float | None = _f(
        None,
        "wan with two experts (Wan2.2-T2V-A14B): CFG scale of the low-noise expert "
        "(transformer_2, timesteps below boundary_ratio · 1000), WanPipeline's guidance_scale_2; "
        "None = sampling.guidance_scale / eval.guidance_scale, the pipeline's default",
    )
    height: int | None = _f(
        None,
        "image or video height in pixels, set with width (diffusers models; None = "
        "model.resolution, else wan's 480): a multiple of the VAE scale × patch size (16 for "
        "SD3.5, FLUX.1 and Wan2.1), checked when the model loads",
    )
    width: int | None = _f(
        None,
        "image or video width in pixels, set with height (None = model.resolution, else wan's 832)",
    )
    true_cfg_scale: float = _f(
        1.0,
        "FLUX.1 true classifier-free guidance (FluxPipeline's true_cfg_scale; 1 = off): a second "
        "pass on the negative prompt each step, on top of the distilled sampling.guidance_scale",
    )
    init_lora: str | None = _f(
        None,
        "start the LoRA from a diffusers LoRA (a folder with pytorch_lora_weights.safetensors, "
        "or a .safetensors file, e.g. one written by `flowdppo export`); its rank must be "
        "model.lora_rank and its modules within model.lora_target_modules. The reference model "
        "stays the base model without LoRA",
    )

    def validate(self) -> None:
        _check(self.lora_rank >= 1, "model.lora_rank", self.lora_rank, "an int >= 1")
        for key in ("height", "width", "resolution"):
            v = getattr(self, key)
            _check(v is None or v >= 1, f"model.{key}", v, "null or a number of pixels >= 1")
        _check(
            math.isfinite(self.true_cfg_scale) and self.true_cfg_scale >= 1,
            "model.true_cfg_scale",
            self.true_cfg_scale,
            "a number >= 1 (1 = off)",
        )
        _check(
            self.negative_prompt is None or self.family != "flux" or self.true_cfg_scale > 1,
            "model.negative_prompt",
            self.negative_prompt,
            "None for model.family flux unless model.true_cfg_scale > 1 (FLUX.1's distilled "
            "guidance has no negative branch)",
        )
        _check(
            self.true_cfg_scale == 1 or self.family == "flux",
            "model.true_cfg_scale",
            self.true_cfg_scale,
            f"1 for model.family {self.family} (true CFG is FLUX.1's; SD3 CFG is "
            "sampling.guidance_scale)",
        )
        _check(
            self.init_lora is None or not self.full_finetune,
            "model.init_lora",
            self.init_lora,
            "null with model.full_finetune: true (a LoRA starts a LoRA run)",
        )
        _check(self.lora_alpha > 0, "model.lora_alpha", self.lora_alpha, "a number > 0")
        _check(
            self.negative_prompt is None or self.family in NEGATIVE_PROMPT_FAMILIES,
            "model.negative_prompt",
            self.negative_prompt,
            f"None for model.family {self.family!r} (negative prompts: "
            f"{', '.join(NEGATIVE_PROMPT_FAMILIES)})",
        )
        _check(
            math.isfinite(self.prompt_cache_mb) and self.prompt_cache_mb >= 0,
            "model.prompt_cache_mb",
            self.prompt_cache_mb,
            "a number of MiB >= 0 (0 = no cache)",
        )
        self._validate_video()

    def _validate_video(self) -> None:
        """``num_frames``: wan only, >= 1; ``height`` and ``width``: set together, not for
        shapes (its images are 32²)."""
        if self.family != "wan":
            _check(
                self.num_frames is None,
                "model.num_frames",
                self.num_frames,
                f"null (an option of family wan, not {self.family})",
            )
        elif self.num_frames is not None:
            _check(self.num_frames >= 1, "model.num_frames", self.num_frames, "an int >= 1")
        scale = self.guidance_scale_2
        _check(
            scale is None or (self.family == "wan" and math.isfinite(scale) and scale >= 0),
            "model.guidance_scale_2",
            scale,
            "null, or a finite number >= 0 for model.family wan (two-expert Wan2.2 A14B)",
        )
        for key in ("height", "width"):
            value = getattr(self, key)
            _check(
                value is None or self.family != "shapes",
                f"model.{key}",
                value,
                "null for model.family shapes (its images are 32²)",
            )
        _check(
            (self.height is None) == (self.width is None),
            "model.height/width",
            (self.height, self.width),
            "both set or both null",
        )


@dataclass
class SamplingConfig:
    num_inference_steps: int = _f(10, "denoising steps T of a rollout")
    sampler: str = _f("flow_sde", "stochastic sampler of trained steps: flow_sde | cps | dance_sde")
    eta: float = _f(0.7, "sampler noise level η")
    guidance_scale: float = _f(
        3.0, "classifier-free guidance in rollouts (1.0 = none; Shapes base: 3)"
    )
    shift: float | None = _f(None, "sigma shift (shapes only; None = the model's own)")
    train_pool: tuple[float, float] = _f(
        (0.0, 0.3), "fractions [f0, f1) of steps eligible for training"
    )
    train_steps: int = _f(1, "K trained steps drawn per rollout from the pool")
    train_mode: str = _f(
        "random", "how the K steps are drawn: random | window", choices=("random", "window")
    )
    prompts_per_iter: int = _f(16, "P distinct prompts per iteration (global, all processes)")
    group_size: int = _f(8, "G samples per prompt (the GRPO group)")
    shared_initial_noise: bool = _f(
        False,
        "the G samples of a prompt start from one initial noise (DanceGRPO; 7x noisier gradients on Shapes, docs/tuning.md)",
    )
    batch_size: int = _f(64, "samples per forward pass when sampling (per process)")
    untrained_precision: str = _f(
        "auto",
        "precision of the rollout steps that are not trained (ODE, no log-prob): full | reduced "
        "(the policy's reduced precision; Shapes: transformer blocks in bfloat16) | auto: reduced "
        "on any CUDA GPU and on a CPU with oneDNN bfloat16 kernels (avx512_bf16 or AMX: recent "
        "Xeon and EPYC), full on other CPUs; the environment variable "
        "FLOWDPPO_FORCE_BF16_KERNELS=1|0 overrides the hardware query. The run resolves auto once "
        "and saves full or reduced in RUN/config.yaml (and prints it), since the two give "
        "different samples: name one for the same results on every machine. Trained steps are "
        "always full",
        choices=("full", "reduced", "auto"),
    )

    def validate(self) -> None:
        from flowdppo.core import SAMPLERS

        _check(
            self.sampler in SAMPLERS and self.sampler != "ode",
            "sampling.sampler",
            self.sampler,
            f"one of {sorted(k for k in SAMPLERS if k != 'ode')}",
        )
        _check(
            self.num_inference_steps >= 1,
            "sampling.num_inference_steps",
            self.num_inference_steps,
            "an int >= 1",
        )
        _check(
            self.eta > 0,
            "sampling.eta",
            self.eta,
            "a number > 0 (η = 0 makes every step an ODE step, of std 0: no density to train)",
        )
        _check(
            self.guidance_scale >= 1.0,
            "sampling.guidance_scale",
            self.guidance_scale,
            "a number >= 1",
        )
        f0, f1 = self.train_pool
        _check(
            0 <= f0 < f1 <= 1,
            "sampling.train_pool",
            self.train_pool,
            "[f0, f1] with 0 <= f0 < f1 <= 1",
        )
        pool = int(self.num_inference_steps * f1) - int(self.num_inference_steps * f0)
        # CPS's std is σ'·sin(ηπ/2): 0 on the last step (σ' = 0), which has no density to train
        # (its KL and divergence metrics would be 0/0 = NaN).
        _check(
            not self.sampler.startswith("cps")
            or int(self.num_inference_steps * f1) < self.num_inference_steps,
            "sampling.train_pool",
            self.train_pool,
            f"f1 with floor(T·f1) < T={self.num_inference_steps} for sampler {self.sampler} (its last step has std 0)",
        )
        _check(
            1 <= self.train_steps <= pool,
            "sampling.train_steps",
            self.train_steps,
            f"an int in [1, {pool}] (the pool has {pool} steps of T={self.num_inference_steps})",
        )
        _check(
            self.prompts_per_iter >= 1,
            "sampling.prompts_per_iter",
            self.prompts_per_iter,
            "an int >= 1",
        )
        _check(
            self.group_size >= 2,
            "sampling.group_size",
            self.group_size,
            "an int >= 2 (advantages need a group)",
        )
        _check(self.batch_size >= 1, "sampling.batch_size", self.batch_size, "an int >= 1")


@dataclass
class LossConfig:
    name: str = _f("flow_dppo", "policy loss: flow_dppo | ratio_clip | grpo_guard")
    reduction: str = _f(
        "mean",
        "log-prob reduction over latent dims: mean (peers' unit) | sum",
        choices=("mean", "sum"),
    )
    delta: float = _f(1e-5, "Flow-DPPO divergence threshold δ (in the reduction's unit)")
    divergence: str = _f("kl", "Flow-DPPO divergence: kl | tv", choices=("kl", "tv"))
    mask: str = _f(
        "asymmetric",
        "Flow-DPPO mask: asymmetric (the paper's: drop a term past δ only when it moved in its "
        "advantage's direction) | symmetric (an ablation: drop every term past δ)",
        choices=("asymmetric", "symmetric"),
    )
    clip_range: float | None = _f(
        None,
        "ratio clip ε of ratio_clip and grpo_guard; null: the loss's published default, 1e-4 for "
        "ratio_clip (Flow-GRPO) and 2e-6 for grpo_guard (its ratio is exp(c·log ρ) with c = s_k, "
        "so it moves far less), resolved on loading and saved with the run",
    )
    guard_scale: str = _f(
        "term",
        "grpo_guard's RatioNorm scale c and step-size divisor |Δ|: term (each term's own s_k and "
        "|Δ|) | batch (their means over the mini-batch, as GRPO-Guard's code does); the two agree "
        "when a mini-batch holds one step index, and differ when it mixes steps (docs/algorithm.md)",
        choices=("term", "batch"),
    )
    beta: float = _f(0.0, "weight β of the exact KL(π_θ ‖ π_ref) penalty")
    adv_clip: float | None = _f(5.0, "clip |A| to this (None: off)")
    delta_schedule: str = _f(
        "fixed",
        "fixed | adaptive: flow_dppo's δ starts at loss.delta and moves each iteration by the band "
        "rule of flowdppo.core.AdaptiveDelta (halved when the measured KL is above 1.5× its "
        "target, doubled below target/1.5) toward loss.target_step_kl or loss.target_base_kl "
        "(docs/algorithm.md §4)",
        choices=("fixed", "adaptive"),
    )
    target_step_kl: float | None = _f(
        None,
        "adaptive δ: the KL(π_old ‖ π_new) per iteration to hold, as kl/old_new_mean measures "
        "it (the loss.reduction unit)",
    )
    target_base_kl: float | None = _f(
        None,
        "adaptive δ: the KL to the base model (kl/ref_mean) allowed after train.max_iters "
        "iterations, spread linearly over them (the rollout's reference pass then runs every "
        "iteration)",
    )

    def validate(self) -> None:
        from flowdppo.core import LOSSES

        _check(self.name in LOSSES, "loss.name", self.name, f"one of {sorted(LOSSES)}")
        _check(self.delta > 0, "loss.delta", self.delta, "a number > 0")
        targets = [t for t in (self.target_step_kl, self.target_base_kl) if t is not None]
        for key in ("target_step_kl", "target_base_kl"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"loss.{key}", v, "null or a number > 0")
        if self.delta_schedule == "adaptive":
            _check(
                self.name == "flow_dppo",
                "loss.delta_schedule",
                self.delta_schedule,
                "fixed unless loss.name is flow_dppo (only its mask has a δ)",
            )
            _check(
                len(targets) == 1,
                "loss.delta_schedule",
                self.delta_schedule,
                "exactly one of loss.target_step_kl and loss.target_base_kl with adaptive",
            )
        else:
            _check(
                not targets,
                "loss.target_step_kl / loss.target_base_kl",
                targets,
                "null with loss.delta_schedule: fixed (set adaptive to use a target)",
            )
        if self.clip_range is None:  # resolved here, once, so the saved config names it
            from flowdppo.core import DEFAULT_CLIP_RANGE

            self.clip_range = DEFAULT_CLIP_RANGE.get(self.name)
        _check(
            self.clip_range is None or self.clip_range > 0,
            "loss.clip_range",
            self.clip_range,
            "null or a number > 0",
        )
        _check(self.beta >= 0, "loss.beta", self.beta, "a number >= 0")
        _check(
            self.adv_clip is None or self.adv_clip > 0,
            "loss.adv_clip",
            self.adv_clip,
            "null or a number > 0",
        )

    def params(self) -> Any:
        """The typed parameters of the chosen core loss (``flowdppo.core.LOSS_PARAMS``): each of
        its fields from the key of this section with its name (``scale``: ``guard_scale``); a
        null ``clip_range`` is the loss's published default."""
        from flowdppo.core import loss_params

        offered = {
            "delta": self.delta,
            "divergence": self.divergence,
            "mask": self.mask,
            "reduction": self.reduction,
            "clip_range": self.clip_range,
            "scale": self.guard_scale,
        }
        return loss_params(self.name, offered, only_known=True)

    def hparams(self) -> dict[str, Any]:
        """The keyword arguments of the chosen core loss: ``params()`` as a dict."""
        return dataclasses.asdict(self.params())


@dataclass
class AdvantageConfig:
    std_mode: str = _f(
        "global",
        "normalise by the std of the group or of the global batch",
        choices=("group", "global"),
    )
    aggregate: str = _f("sum", "multi-reward aggregation: sum | gdpo", choices=("sum", "gdpo"))


@dataclass
class RewardEntry:
    name: str = _f("shapes_tifa", "registered reward name")
    weight: float = _f(1.0, "weight in the aggregation")
    kwargs: dict[str, Any] = _f({}, "keyword options of the reward")


@dataclass
class OptimConfig:
    lr: float = _f(3e-4, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas")
    grad_clip: float = _f(1.0, "global grad-norm clip")
    updates_per_iter: int = _f(
        2, "N optimizer updates per rollout (disjoint shuffled mini-batches)"
    )
    epochs: int = _f(
        1,
        "passes over each rollout's (sample, step) pairs, each reshuffled and split into "
        "optim.updates_per_iter mini-batches: epochs × updates_per_iter optimizer updates per "
        "rollout, every pair used epochs times (Flow-GRPO's num_inner_epochs)",
    )
    micro_batch_size: int = _f(
        32, "(sample, step) pairs per forward/backward (gradient accumulation)"
    )
    ema_decay: float = _f(0.0, "EMA of trainable weights (0 = off); evaluation uses the EMA")
    lr_schedule: str = _f(
        "cosine",
        "constant | cosine: lr decays to lr·lr_final_frac over train.max_iters (the run's horizon, "
        "not --max-iters, so a stopped and resumed run follows the same schedule)",
        choices=("constant", "cosine"),
    )
    lr_final_frac: float = _f(0.1, "cosine schedule: final lr as a fraction of lr")
    allow_low_precision_weights: bool = _f(
        False,
        "train trainable weights stored in bfloat16/float16 even where their rounding erases "
        "steps of optim.lr (a warning instead of an error; flowdppo.trainer.guards)",
    )

    def validate(self) -> None:
        _check(math.isfinite(self.lr) and self.lr > 0, "optim.lr", self.lr, "a finite number > 0")
        _check(
            0 <= self.lr_final_frac <= 1,
            "optim.lr_final_frac",
            self.lr_final_frac,
            "a number in [0, 1]",
        )
        _check(self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "a number > 0")
        _check(
            self.updates_per_iter >= 1,
            "optim.updates_per_iter",
            self.updates_per_iter,
            "an int >= 1",
        )
        _check(self.epochs >= 1, "optim.epochs", self.epochs, "an int >= 1")
        _check(
            self.micro_batch_size >= 1,
            "optim.micro_batch_size",
            self.micro_batch_size,
            "an int >= 1",
        )
        _check(0 <= self.ema_decay < 1, "optim.ema_decay", self.ema_decay, "a number in [0, 1)")


@dataclass
class DataConfig:
    train_prompts: str = _f(
        "shapes:train:counting,two_object,color_attr",
        "training prompts: shapes:train | shapes:train:<cat>,<cat> | a .txt/.jsonl path "
        "(default: the Shapes categories with a measurable gradient signal, docs/tuning.md)",
    )
    eval_prompts: str = _f("shapes:test", "evaluation prompts (same forms)")
    balance_key: str | None = _f(
        "category", "metadata key whose values are drawn equally often (None: uniform over prompts)"
    )


@dataclass
class EvalConfig:
    every: int = _f(40, "evaluate every this many iterations (0 = only at the end)")
    num_inference_steps: int = _f(40, "ODE steps of the evaluation sampler")
    guidance_scale: float | None = _f(
        None,
        "CFG of evaluation (None: sampling.guidance_scale, so eval samples the trained policy)",
    )
    per_category: int = _f(50, "samples per category (shapes) or prompts (files)")
    seed: int = _f(1234, "evaluation noise seed (fixed across evaluations)")
    kl_samples: int = _f(
        64,
        "samples for eval/kl_base, the exact KL to the base model along the policy's own "
        "trajectories on fixed prompts and noise (0 = off; docs/metrics.md)",
    )
    skip_guidance_layers: list[int] | None = _f(
        None,
        "SD3.5 skip-layer guidance in evaluation sampling only (StableDiffusion3Pipeline's "
        "skip_guidance_layers; SD3.5-Medium: [7, 8, 9]; null = off); needs CFG > 1",
    )
    skip_layer_guidance_scale: float = _f(2.8, "skip-layer guidance scale")
    skip_layer_guidance_start: float = _f(
        0.01, "skip-layer guidance on steps i with start·T < i < stop·T: start fraction"
    )
    skip_layer_guidance_stop: float = _f(0.2, "skip-layer guidance: stop fraction")

    def validate(self) -> None:
        _check(self.kl_samples >= 0, "eval.kl_samples", self.kl_samples, "an int >= 0")
        _check(self.every >= 0, "eval.every", self.every, "an int >= 0 (0 = only at the end)")
        _check(
            self.num_inference_steps >= 1,
            "eval.num_inference_steps",
            self.num_inference_steps,
            "an int >= 1",
        )
        _check(self.per_category >= 1, "eval.per_category", self.per_category, "an int >= 1")
        layers = self.skip_guidance_layers
        _check(
            layers is None or (len(layers) > 0 and all(i >= 0 for i in layers)),
            "eval.skip_guidance_layers",
            layers,
            "null or a non-empty list of transformer block indices >= 0",
        )
        start, stop = self.skip_layer_guidance_start, self.skip_layer_guidance_stop
        _check(
            0 <= start < stop <= 1,
            "eval.skip_layer_guidance_start / _stop",
            [start, stop],
            "0 <= start < stop <= 1",
        )
        _check(
            math.isfinite(self.skip_layer_guidance_scale),
            "eval.skip_layer_guidance_scale",
            self.skip_layer_guidance_scale,
            "a finite number",
        )
        g = self.guidance_scale
        _check(
            g is None or (math.isfinite(g) and g >= 1.0),
            "eval.guidance_scale",
            g,
            "null or a number >= 1 (1 = no guidance)",
        )


@dataclass
class TrainConfig:
    max_iters: int = _f(120, "iterations to run")
    max_minutes: float = _f(
        0.0,
        "also stop (evaluate, save) after the iteration that crosses this wall-clock budget (0 = off)",
    )
    seed: int = _f(0, "global seed (prompt order, noise, steps)")
    save_every: int = _f(5, "checkpoint every this many iterations")
    sample_every: int = _f(10, "write a sample grid every this many iterations")
    threads: int = _f(0, "torch CPU threads (0 = torch default)")
    on_policy_tol: float = _f(1e-6, "warn when the on-policy KL exceeds this (reduction unit)")
    noise_floor_factor: float = _f(
        10.0,
        "warn once when flow_dppo's δ < this × check/noise_floor_kl, the KL that numerics alone "
        "put between rollout and training means (0 = never; flowdppo.trainer.guards)",
    )
    diagnostic_terms: int = _f(
        32,
        "(sample, step) terms per iteration whose log ρ, exact old-to-new KL, advantage and step "
        "are written to RUN/diagnostics/ratio_kl.jsonl (0 = off): the ratio-vs-divergence "
        "picture of `flowdppo plot --diagnostic ratio`",
    )
    kl_ref_every: int = _f(
        10,
        "with loss.beta = 0, compute the rollout's KL to the base (kl/ref_mean, kl/ref_max) on "
        "iterations 1, 1 + N, 1 + 2N, ... only: a pass with the LoRA off over every trained step "
        "(0 = never); with loss.beta > 0 it runs every iteration (the penalty needs it)",
    )
    collective_timeout_s: float = _f(
        0.0,
        "with several processes: how long a collective (a gather, an all-reduce) waits for the "
        "other processes before this one stops with one line naming the wait (a hung or stopped "
        "process); 0 = the backend's default (gloo 30 min, NCCL 10 min)",
    )
    max_skipped_updates: int = _f(
        10,
        "stop the run (saving a checkpoint of finite weights) when this many optimizer updates "
        "were skipped for NaN/inf losses or gradients since the last iteration that skipped none "
        "(fault/skipped_updates; 0 = never stop)",
    )

    def validate(self) -> None:
        _check(self.kl_ref_every >= 0, "train.kl_ref_every", self.kl_ref_every, "an int >= 0")
        _check(
            self.diagnostic_terms >= 0,
            "train.diagnostic_terms",
            self.diagnostic_terms,
            "an int >= 0",
        )
        _check(self.max_iters >= 1, "train.max_iters", self.max_iters, "an int >= 1")
        _check(
            math.isfinite(self.collective_timeout_s) and self.collective_timeout_s >= 0,
            "train.collective_timeout_s",
            self.collective_timeout_s,
            "a number of seconds >= 0 (0 = the backend's default)",
        )
        _check(
            math.isfinite(self.max_minutes) and self.max_minutes >= 0,
            "train.max_minutes",
            self.max_minutes,
            "a number >= 0 (0 = no budget)",
        )
        _check(self.save_every >= 1, "train.save_every", self.save_every, "an int >= 1")
        _check(self.threads >= 0, "train.threads", self.threads, "an int >= 0 (0 = torch default)")
        _check(self.on_policy_tol >= 0, "train.on_policy_tol", self.on_policy_tol, "a number >= 0")
        _check(
            self.noise_floor_factor >= 0,
            "train.noise_floor_factor",
            self.noise_floor_factor,
            "a number >= 0",
        )
        _check(
            self.max_skipped_updates >= 0,
            "train.max_skipped_updates",
            self.max_skipped_updates,
            "an int >= 0 (0 = never stop)",
        )


@dataclass
class AlarmConfig:
    hack_evals: int = _f(
        2,
        "alarm/reward_hacking after this many evaluations in a row where the run's reward on "
        "the evaluation images is above the base's and eval/strict_overall below it (0 = off)",
    )
    fd_rise: float = _f(
        0.5, "alarm/fd when eval/fd rises more than this fraction above the base's (0 = off)"
    )
    diversity_floor: float = _f(
        0.5, "alarm/diversity when eval/diversity falls below this fraction of the base's (0 = off)"
    )
    kl_budget: float | None = _f(
        None, "alarm/kl_budget when eval/kl_base exceeds this (null = off)"
    )
    stop: bool = _f(False, "stop the run (saved) when an alarm fires")

    def validate(self) -> None:
        _check(self.hack_evals >= 0, "alarms.hack_evals", self.hack_evals, "an int >= 0")
        _check(self.fd_rise >= 0, "alarms.fd_rise", self.fd_rise, "a number >= 0")
        _check(
            0 <= self.diversity_floor <= 1,
            "alarms.diversity_floor",
            self.diversity_floor,
            "a number in [0, 1]",
        )
        _check(
            self.kl_budget is None or self.kl_budget > 0,
            "alarms.kl_budget",
            self.kl_budget,
            "null or a number > 0",
        )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    rewards: list[RewardEntry] = field(default_factory=lambda: [RewardEntry()])
    reward_on_error: str = _f(
        "raise", "a failing reward: raise | drop the samples", choices=("raise", "drop")
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)

    @property
    def eval_guidance_scale(self) -> float:
        """The evaluation CFG: ``eval.guidance_scale``, or the rollouts' when unset."""
        g = self.eval.guidance_scale
        return self.sampling.guidance_scale if g is None else g

    def reference_pass(self, iteration: int) -> bool:
        """Whether the rollout of 0-based ``iteration`` computes the reference means μ_ref: always
        with ``loss.beta > 0`` or a ``loss.target_base_kl`` (both need it), else every
        ``train.kl_ref_every`` iterations from the first."""
        if self.loss.beta > 0 or self.loss.target_base_kl is not None:
            return True
        n = self.train.kl_ref_every
        return n > 0 and iteration % n == 0

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if hasattr(v, "validate"):
                v.validate()
        _check(len(self.rewards) >= 1, "rewards", self.rewards, "at least one reward")
