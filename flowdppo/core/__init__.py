"""The algorithm core of Flow-DPPO: plain PyTorch, no model library (docs/algorithm.md §1–§5).

Schedules, per-step Gaussian policies of the samplers, exact divergences, the losses, GRPO
advantages, trained-step selection and the one rollout loop over a velocity function.
"""

from .advantages import group_advantages, sharded_group_advantages
from .divergence import DIVERGENCES, gaussian_kl, gaussian_tv, get_divergence
from .losses import (
    DEFAULT_CLIP_RANGE,
    LOSS_PARAMS,
    LOSSES,
    MAX_LOG_RATIO,
    FlowDPPOParams,
    GRPOGuardParams,
    LossInputs,
    LossOutput,
    RatioClipParams,
    clip_advantages,
    compute_loss,
    dppo_drop,
    flow_dppo_loss,
    grpo_guard_loss,
    loss_params,
    ratio_clip_loss,
    reference_kl,
    register_loss,
    stable_ratio,
)
from .rollout import RolloutOutput, VelocityFn, recompute_step, sample
from .schedules import model_sigmas, shifted_sigmas
from .sde import (
    SAMPLERS,
    StepKernel,
    StepOutput,
    cps_peer_parity_step,
    cps_step,
    dance_sde_step,
    flow_sde_step,
    gaussian_log_prob,
    get_sampler,
    ode_step,
)
from .steps import select_train_steps
from .trust_region import AdaptiveDelta

__all__ = [
    "DEFAULT_CLIP_RANGE",
    "DIVERGENCES",
    "LOSSES",
    "LOSS_PARAMS",
    "MAX_LOG_RATIO",
    "SAMPLERS",
    "AdaptiveDelta",
    "FlowDPPOParams",
    "GRPOGuardParams",
    "LossInputs",
    "LossOutput",
    "RatioClipParams",
    "RolloutOutput",
    "StepKernel",
    "StepOutput",
    "VelocityFn",
    "clip_advantages",
    "compute_loss",
    "cps_peer_parity_step",
    "cps_step",
    "dance_sde_step",
    "dppo_drop",
    "flow_dppo_loss",
    "flow_sde_step",
    "gaussian_kl",
    "gaussian_log_prob",
    "gaussian_tv",
    "get_divergence",
    "get_sampler",
    "group_advantages",
    "grpo_guard_loss",
    "loss_params",
    "model_sigmas",
    "ode_step",
    "ratio_clip_loss",
    "recompute_step",
    "reference_kl",
    "register_loss",
    "sample",
    "select_train_steps",
    "sharded_group_advantages",
    "shifted_sigmas",
    "stable_ratio",
]
