"""The policy update of one iteration: N optimizer steps over (sample, trained step) pairs.

ALGORITHM.md §6 step 4. The global set of valid pairs is shuffled with a permutation that is a
function of (seed, iteration) only, then cut into N disjoint mini-batches; every process takes
the pairs of each mini-batch whose sample it holds and splits them into micro-batches. Each
micro-batch contributes ``loss_mean · n_micro / n_minibatch`` and gradients are summed over
micro-batches and processes, so every optimizer step follows the mean over the whole global
mini-batch, however it is split (the batch × accumulation invariance of STYLE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from flowdppo.config.schema import RunConfig
from flowdppo.core import LossInputs, compute_loss, recompute_step
from flowdppo.models.base import Policy, index_cond
from flowdppo.trainer.experience import Experience


@dataclass
class MetricAccumulator:
    """Term-weighted means of ``*`` metrics, and max/min of ``*_max`` / ``*_min`` metrics."""

    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    extremes: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, float], n: float) -> None:
        for k, v in metrics.items():
            if k.endswith("_max") or k.endswith("/max"):
                self.extremes[k] = max(self.extremes.get(k, -float("inf")), v)
            elif k.endswith("_min") or k.endswith("/min"):
                self.extremes[k] = min(self.extremes.get(k, float("inf")), v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v * n
                self.weights[k] = self.weights.get(k, 0.0) + n

    def result(self, reduce: Callable[[torch.Tensor, str], torch.Tensor]) -> dict[str, float]:
        """Reduce across processes (``reduce(tensor, "sum"|"max"|"min")``) and finish the means."""
        out: dict[str, float] = {}
        for k in sorted(self.sums):
            t = reduce(torch.tensor([self.sums[k], self.weights[k]], dtype=torch.float64), "sum")
            out[k] = float(t[0] / t[1]) if t[1] > 0 else 0.0
        for k in sorted(self.extremes):
            op = "max" if k.endswith("max") else "min"
            out[k] = float(reduce(torch.tensor([self.extremes[k]], dtype=torch.float64), op)[0])
        return out


def minibatches(num_samples: int, num_steps: int, valid: torch.Tensor, cfg: RunConfig, iteration: int) -> list[torch.Tensor]:
    """Global pair ids (sample * K + step) of each of the N mini-batches; valid samples only."""
    g = torch.Generator().manual_seed((cfg.train.seed * 7_919 + iteration) * 104_729 + 1)
    pairs = torch.arange(num_samples * num_steps)
    pairs = pairs[valid.repeat_interleave(num_steps)]
    pairs = pairs[torch.randperm(pairs.numel(), generator=g)]
    return list(torch.tensor_split(pairs, cfg.optim.updates_per_iter))


def _micro_loss(policy: Policy, exp: Experience, local: torch.Tensor, cfg: RunConfig):
    """Loss output of one micro-batch of local pair ids (sample_local * K + step)."""
    k = exp.std.shape[1]
    i, s = local // k, local % k
    cond = index_cond(policy.encode_prompts([exp.prompts[j] for j in i.tolist()]), slice(None))

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return policy.velocity(x, sigma, cond, cfg.sampling.guidance_scale)

    new = recompute_step(
        velocity, exp.x[i, s], exp.x_next[i, s], exp.sigma[s], exp.sigma_next[s],
        sampler=cfg.sampling.sampler, eta=cfg.sampling.eta, reduction=cfg.loss.reduction,
    )
    assert exp.advantages is not None
    inp = LossInputs(
        log_prob=new.log_prob, log_prob_old=exp.log_prob[i, s], advantages=exp.advantages[i],
        mean=new.mean, mean_old=exp.mean[i, s], std=exp.std[i, s], mean_ref=exp.mean_ref[i, s],
        step_size=(exp.sigma[s] - exp.sigma_next[s]),
    )
    return compute_loss(cfg.loss.name, inp, beta=cfg.loss.beta, adv_clip=cfg.loss.adv_clip, **cfg.loss.hparams())


def update_policy(
    policy: Policy, exp: Experience, cfg: RunConfig, optimizer: torch.optim.Optimizer, iteration: int,
    num_samples: int, valid_global: torch.Tensor, reduce: Callable[[torch.Tensor, str], torch.Tensor],
    after_step: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Run the N updates; returns metrics averaged over all terms of all processes."""
    params = list(policy.trainable_parameters())
    k = exp.std.shape[1]
    lo = int(exp.sample_ids[0])
    acc, first = MetricAccumulator(), MetricAccumulator()
    for u, mb in enumerate(minibatches(num_samples, k, valid_global, cfg, iteration)):
        mine = mb[(mb // k >= lo) & (mb // k < lo + len(exp.prompts))] - lo * k  # local pair ids
        for micro in torch.split(mine, cfg.optim.micro_batch_size):
            out = _micro_loss(policy, exp, micro, cfg)
            (out.loss * (micro.numel() / mb.numel())).backward()
            acc.add(out.metrics, micro.numel())
            if u == 0:
                first.add(out.metrics, micro.numel())
        for p in params:  # sum over processes: each holds its share of the global mean
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad = reduce(p.grad, "sum")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        acc.add({"train/grad_norm": float(grad_norm)}, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after_step()
    metrics = acc.result(reduce)
    pre = first.result(reduce)  # the first update runs before any optimizer step: on-policy
    metrics["check/onpolicy_kl_max"] = pre.get("kl/old_new_max", 0.0)
    metrics["check/onpolicy_ratio_err_max"] = max(abs(pre.get("ratio/max", 1.0) - 1), abs(pre.get("ratio/min", 1.0) - 1))
    return metrics
