"""The policy update of one iteration: N optimizer steps over (sample, trained step) pairs.

docs/algorithm.md §6 step 4. The global set of valid pairs is shuffled with a permutation that is a
function of (seed, iteration) only, then cut into N disjoint mini-batches; every process takes
the pairs of each mini-batch whose sample it holds and splits them into micro-batches. Each
micro-batch contributes ``loss_mean · n_micro / n_minibatch`` and gradients are summed over
micro-batches and processes, so every optimizer step follows the mean over the whole global
mini-batch, however it is split (the batch × accumulation invariance of STYLE.md).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from flowdppo.config.schema import RunConfig
from flowdppo.core import LossInputs, compute_loss, gaussian_kl, recompute_step
from flowdppo.models.base import Policy
from flowdppo.trainer.crashpoints import crash_point
from flowdppo.trainer.experience import Experience


@dataclass
class MetricAccumulator:
    """Term-weighted means of ``*`` metrics, and max/min of ``*_max`` / ``*_min`` metrics."""

    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    extremes: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, float], n: float) -> None:
        for k, v in metrics.items():
            if _is_max(k):
                self.extremes[k] = max(self.extremes.get(k, -float("inf")), v)
            elif _is_extreme(k):
                self.extremes[k] = min(self.extremes.get(k, float("inf")), v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v * n
                self.weights[k] = self.weights.get(k, 0.0) + n

    def result(
        self, reduce: Callable[[torch.Tensor, str], torch.Tensor], keys: list[str] | None = None
    ) -> dict[str, float]:
        """Reduce across processes (``reduce(tensor, "sum"|"max"|"min")``) and finish the means.

        ``keys``: the metric names of all processes (every process must issue the same
        collectives in the same order, also one that saw no terms); default: this one's own.
        """
        names = sorted(set(self.sums) | set(self.extremes)) if keys is None else keys
        means = [k for k in names if not _is_extreme(k)]
        highs = [k for k in names if _is_max(k)]
        lows = [k for k in names if _is_extreme(k) and not _is_max(k)]
        out: dict[str, float] = {}
        # One collective per kind (sum, max, min) for all metrics, not one per metric.
        if means:
            values = [self.sums.get(k, 0.0) for k in means]
            values += [self.weights.get(k, 0.0) for k in means]
            t = reduce(torch.tensor(values, dtype=torch.float64), "sum").tolist()  # [2M]
            for k, total, weight in zip(means, t[: len(means)], t[len(means) :], strict=True):
                out[k] = total / weight if weight > 0 else 0.0
        for ks, op, empty in ((highs, "max", -float("inf")), (lows, "min", float("inf"))):
            if ks:
                v = torch.tensor([self.extremes.get(k, empty) for k in ks], dtype=torch.float64)
                out.update(zip(ks, reduce(v, op).tolist(), strict=True))
        return {k: out[k] for k in names}

    def keys(self) -> list[str]:
        return sorted(set(self.sums) | set(self.extremes))


def learning_rate(cfg: RunConfig, iteration: int) -> float:
    """The lr of (0-based) ``iteration``: constant, or cosine from ``lr`` at 0 to
    ``lr · lr_final_frac`` at ``train.max_iters`` (held there beyond it). A pure function of the
    iteration, so a resumed run needs no scheduler state."""
    o = cfg.optim
    if o.lr_schedule == "constant":
        return o.lr
    if o.lr_schedule != "cosine":
        raise ValueError(f"optim.lr_schedule: expected constant | cosine, got {o.lr_schedule!r}")
    t = min(iteration / max(1, cfg.train.max_iters), 1.0)
    return o.lr * (o.lr_final_frac + (1 - o.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def _is_max(k: str) -> bool:
    return k.endswith("_max") or k.endswith("/max")


def _is_extreme(k: str) -> bool:
    return _is_max(k) or k.endswith("_min") or k.endswith("/min")


def all_keys(keys: list[str]) -> list[str]:
    """The union of the metric names of all processes (``keys`` itself with one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sorted(keys)
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(keys))
    return sorted({k for ks in gathered for k in ks or []})


def minibatches(
    num_samples: int, num_steps: int, valid: torch.Tensor, cfg: RunConfig, iteration: int
) -> list[torch.Tensor]:
    """Global pair ids (sample * K + step) of each mini-batch, valid samples only, in order: for
    each of ``optim.epochs`` passes, the pairs shuffled anew and split into N mini-batches (the
    first pass's order does not depend on the number of passes)."""
    g = torch.Generator().manual_seed((cfg.train.seed * 7_919 + iteration) * 104_729 + 1)
    pairs = torch.arange(num_samples * num_steps)
    pairs = pairs[valid.repeat_interleave(num_steps)]
    out: list[torch.Tensor] = []
    for _ in range(cfg.optim.epochs):
        order = pairs[torch.randperm(pairs.numel(), generator=g)]
        out += torch.tensor_split(order, cfg.optim.updates_per_iter)
    return out


def _micro_loss(
    policy: Policy,
    exp: Experience,
    local: torch.Tensor,
    cfg: RunConfig,
    hparams: dict[str, Any],
):
    """Loss output of one micro-batch of local pair ids (sample_local * K + step); ``hparams``
    the loss's hyper-parameters (``loss_hparams``)."""
    k = exp.std.shape[1]
    i, s = local // k, local % k
    cond = policy.encode_prompts([exp.prompts[j] for j in i.tolist()])  # cached per prompt

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return policy.velocity(x, sigma, cond, cfg.sampling.guidance_scale)

    new = recompute_step(
        velocity,
        exp.x[i, s],
        exp.x_next[i, s],
        exp.sigma[s],
        exp.sigma_next[s],
        sampler=cfg.sampling.sampler,
        eta=cfg.sampling.eta,
        reduction=cfg.loss.reduction,
    )
    assert exp.advantages is not None
    inp = LossInputs(
        log_prob=new.log_prob,
        log_prob_old=exp.log_prob[i, s],
        advantages=exp.advantages[i],
        mean=new.mean,
        mean_old=exp.mean[i, s],
        std=exp.std[i, s],
        mean_ref=None if exp.mean_ref is None else exp.mean_ref[i, s],  # only β > 0 needs it
        step_size=(exp.sigma[s] - exp.sigma_next[s]),
    )
    out = compute_loss(
        cfg.loss.name, inp, beta=cfg.loss.beta, adv_clip=cfg.loss.adv_clip, **hparams
    )
    return out, (new, i, s)


def loss_hparams(cfg: RunConfig, delta: float | None) -> dict[str, Any]:
    """The loss's hyper-parameters of this iteration: ``loss.*``, with the adaptive δ if given
    (``loss.delta_schedule: adaptive``). Built once per iteration, not per micro-batch."""
    params = cfg.loss.params()
    if delta is not None:
        params = dataclasses.replace(params, delta=delta)
    return dataclasses.asdict(params)


def _diagnostic_rows(
    exp: Experience, cfg: RunConfig, parts: tuple, n: int, update: int
) -> list[dict[str, float]]:
    """The first ``n`` terms of a (shuffled) micro-batch: step index, log ρ, the exact
    KL(π_old ‖ π_θ) and the advantage, for ``train.diagnostic_terms`` (the ratio-vs-divergence
    picture, docs/metrics.md). Detached; no random draw, so training is unchanged."""
    new, i, s = parts
    i, s = i[:n], s[:n]
    with torch.no_grad():
        log_rho = new.log_prob[:n].detach() - exp.log_prob[i, s]
        kl = gaussian_kl(new.mean[:n].detach(), exp.mean[i, s], exp.std[i, s], cfg.loss.reduction)
    assert exp.advantages is not None
    adv = exp.advantages[i]
    return [
        {
            "update": update,
            "step": int(exp.step_index[int(s[j])]),
            "log_rho": float(log_rho[j]),
            "kl": float(kl[j]),
            "adv": float(adv[j]),
        }
        for j in range(len(i))
    ]


class NonFiniteError(RuntimeError):
    """Training met NaN/inf values it cannot skip (or too many in a row); the message says what."""


def _sum_gradients(
    params: list[torch.nn.Parameter],
    reduce: Callable[[torch.Tensor, str], torch.Tensor],
    faults: float = 0.0,
    processes: int | None = None,
) -> float:
    """Sum gradients over processes (each holds its share of the global mean) in one collective:
    flattened into one buffer, not one all-reduce per parameter (hundreds for a big LoRA).
    ``faults`` (this process's count of non-finite inputs) rides in the same buffer; returns
    the sum over processes, so that every process decides alike whether to skip the step.
    With ``processes`` 1 the gradients already are the sum: nothing is copied (None: the
    number is unknown, the collective runs)."""
    if processes == 1:
        for p in params:
            if p.grad is None:  # as the flat buffer would: a zero gradient, stepped like the others
                p.grad = torch.zeros_like(p)
        return faults
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flag = torch.tensor([faults], dtype=grads[0].dtype, device=grads[0].device)
    flat = reduce(torch.cat([*(g.reshape(-1) for g in grads), flag]), "sum")  # [total numel + 1]
    for p, g in zip(params, flat[:-1].split([g.numel() for g in grads]), strict=True):
        p.grad = g.view_as(p).to(p.dtype)
    return float(flat[-1])


@torch.no_grad()
def _check_weights(params: list[torch.nn.Parameter], iteration: int, lr: float) -> None:
    """Refuse to go on with non-finite weights (the step's inputs were finite: the lr or the
    optimizer's state overflowed); nothing after the last checkpoint is saved. A tensor is
    finite iff its largest |w| is (NaN propagates through the max): one fused call."""
    live = [p for p in params if p.numel()]  # an empty tensor is finite (and has no max)
    if live and not bool(torch.stack(torch._foreach_norm(live, float("inf"))).isfinite().all()):
        raise NonFiniteError(
            f"iteration {iteration}: the optimizer step made the trainable weights non-finite "
            f"(lr {lr:g}; its gradients were finite); the run stops, its last checkpoint is "
            "the last good state"
        )


def update_policy(
    policy: Policy,
    exp: Experience,
    cfg: RunConfig,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    num_samples: int,
    valid_global: torch.Tensor,
    reduce: Callable[[torch.Tensor, str], torch.Tensor],
    after_step: Callable[[], None] = lambda: None,
    delta: float | None = None,
    diagnostics: list[dict[str, float]] | None = None,
    processes: int | None = None,
) -> dict[str, float]:
    """Run the epochs × N updates; returns metrics averaged over all terms of all processes.
    ``delta`` replaces ``loss.delta`` for this iteration (the adaptive δ); ``diagnostics``, if
    given, receives up to ``train.diagnostic_terms`` of this process's terms (spread over the
    updates: the first terms of each update's first micro-batch). ``processes``: how many
    processes ``reduce`` sums over (1: the gradients need no summing; None: unknown)."""
    params = list(policy.trainable_parameters())
    lr = learning_rate(cfg, iteration)
    for group in optimizer.param_groups:
        group["lr"] = lr
    k = exp.std.shape[1]
    lo = int(exp.sample_ids[0])
    acc, first = MetricAccumulator(), MetricAccumulator()
    assert exp.advantages is not None
    bad_adv = not bool(torch.isfinite(exp.advantages).all())  # rewards are checked on arrival
    skipped = 0
    hparams = loss_hparams(cfg, delta)
    batches = [
        mb for mb in minibatches(num_samples, k, valid_global, cfg, iteration) if mb.numel() > 0
    ]
    for u, mb in enumerate(batches):
        mine = mb[(mb // k >= lo) & (mb // k < lo + len(exp.prompts))] - lo * k  # local pair ids
        # A process may hold none of a mini-batch's pairs: it adds no term (the mean of an empty
        # micro-batch is NaN) but still joins the gradient sum below.
        bad_loss = False
        for j, micro in enumerate(
            torch.split(mine, cfg.optim.micro_batch_size) if mine.numel() else ()
        ):
            out, parts = _micro_loss(policy, exp, micro, cfg, hparams)
            if diagnostics is not None and j == 0:
                per_update = -(-cfg.train.diagnostic_terms // len(batches))
                diagnostics += _diagnostic_rows(exp, cfg, parts, per_update, u)
            bad_loss |= not bool(torch.isfinite(out.loss))
            (out.loss * (micro.numel() / mb.numel())).backward()
            acc.add(out.metrics, micro.numel())
            if u == 0:
                first.add(out.metrics, micro.numel())
        faults = _sum_gradients(params, reduce, float(bad_adv) + float(bad_loss), processes)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip, foreach=True)
        # identical on every process: summed gradients and fault counts
        finite = faults == 0 and bool(torch.isfinite(grad_norm))
        acc.add(
            {
                "train/grad_norm": float(grad_norm) if finite else 0.0,
                "train/skipped_frac": float(not finite),
            },
            1.0,
        )
        if finite:
            optimizer.step()
            _check_weights(params, iteration, lr)
            after_step()
            crash_point("update")
        else:
            skipped += 1
            what = (
                "advantages" if bad_adv else "loss" if bad_loss else "loss or gradient norm"
            )  # this process's view; another process may have seen the non-finite value
            warnings.warn(
                f"iteration {iteration}: non-finite {what}; optimizer step {u + 1} of "
                f"{len(batches)} skipped (fault/skipped_updates)",
                stacklevel=2,
            )
        optimizer.zero_grad(set_to_none=True)
    keys = all_keys(acc.keys())
    metrics = acc.result(reduce, keys)
    metrics["train/lr"] = lr
    metrics["fault/skipped_updates"] = float(skipped)
    pre = first.result(reduce, keys)  # the first update runs before any optimizer step: on-policy
    metrics["check/onpolicy_kl_max"] = pre.get("kl/old_new_max", 0.0)
    metrics["check/noise_floor_kl"] = pre.get("kl/old_new_mean", 0.0)
    metrics["check/onpolicy_ratio_err_max"] = max(
        abs(pre.get("ratio/max", 1.0) - 1), abs(pre.get("ratio/min", 1.0) - 1)
    )
    if (
        "kl/ref_mean" in metrics
    ):  # the β-penalty's KL(π_θ ‖ π_ref) during the updates; the trainer's
        metrics["kl/ref_update_mean"] = metrics.pop("kl/ref_mean")  # kl/ref_mean is the rollout's
    return metrics
