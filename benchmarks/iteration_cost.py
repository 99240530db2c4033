"""How close is a training iteration to its compute floor?

An RL iteration needs at least its model calls: for the rollout, T forward passes per forward
batch (one batched pass of 2B with CFG), and for the update one forward and one backward per
micro-batch of (sample, trained step) pairs. This script measures, in one process, at the same
batch shapes and thread count, interleaved so that machine load affects both alike:

- the **floor**: exactly those calls of the same network on the same shapes, with no trainer
  around them (random latents; the update's forward and backward of the velocity only);
- **real iterations**: ``Trainer.step()`` of the configured run (evaluation and checkpoints off),
  with its own breakdown (rollout, reward wait, update, the rest);

and prints ``real/floor`` and the breakdown as medians over ``--iters`` iterations after
``--warmup`` (with the rollout's image decode, real work for the rewards outside the floor, on a
row of its own; the per-iteration spread; and the ratio in process CPU time, which a machine
shared with other jobs disturbs less than wall time); the network's forward calls per rollout
step and per trained step (a forward hook: must be 1 and 1 with β = 0); Flow-DPPO's update
time over ratio clipping's on identical batches (the exact divergence's price); and peak RSS.

    .venv/bin/python benchmarks/iteration_cost.py [--threads 2] [--iters 8] [--warmup 2]
        [--set KEY=VALUE ...]           # the default Shapes run, or any config override
    .venv/bin/python benchmarks/iteration_cost.py --tiny   # a tiny random Shapes model (smoke)
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from flowdppo.config import load_config
from flowdppo.trainer.trainer import Trainer


def _network(policy) -> torch.nn.Module:
    """The policy's denoising network (the module whose calls are the floor)."""
    for name in ("model", "transformer"):
        net = getattr(policy, name, None)
        if isinstance(net, torch.nn.Module):
            return net
    raise TypeError(f"no denoising network found on {type(policy).__name__}")


class DecodeTimer:
    """Wall time spent in the policy's ``decode`` (latents to images for the rewards: real work
    of the rollout that is not a network call of the floor), summed until ``take``."""

    def __init__(self, policy) -> None:
        self.total = 0.0
        self._decode = policy.decode
        policy.decode = self._timed

    def _timed(self, latents: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        try:
            return self._decode(latents)
        finally:
            self.total += time.perf_counter() - t0

    def take(self) -> float:
        total, self.total = self.total, 0.0
        return total


class CallCounter:
    """Counts forward calls of a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


def floor_times(trainer: Trainer) -> tuple[float, float]:
    """(rollout floor s, update floor s): the bare network calls of one iteration."""
    cfg, policy = trainer.cfg, trainer.policy
    s = cfg.sampling
    n_local = trainer.num_samples // trainer.acc.num_processes
    prompts = [trainer.prompts[i % len(trainer.prompts)] for i in range(n_local)]
    sig = policy.sigmas(s.num_inference_steps).to(policy.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n_local, s.batch_size):
            batch = prompts[lo : lo + s.batch_size]
            cond = policy.encode_prompts(batch)
            x = torch.randn(len(batch), *policy.latent_shape, device=policy.device)
            for i in range(s.num_inference_steps):
                policy.velocity(x, sig[i].expand(len(batch)), cond, s.guidance_scale)
    t_roll = time.perf_counter() - t0
    pairs = n_local * s.train_steps
    m = cfg.optim.micro_batch_size
    t0 = time.perf_counter()
    starts = list(range(0, pairs, m)) * cfg.optim.epochs  # each pass over the pairs
    for lo in starts:
        b = min(m, pairs - lo)
        cond = policy.encode_prompts(prompts[:b])
        x = torch.randn(b, *policy.latent_shape, device=policy.device)
        v = policy.velocity(x, sig[0].expand(b), cond, s.guidance_scale)
        v.float().square().mean().backward()
    for p in policy.trainable_parameters():
        p.grad = None
    return t_roll, time.perf_counter() - t0


def loss_price(trainer: Trainer, repeats: int) -> float:
    """Flow-DPPO update time / ratio-clip update time on one identical stored batch."""
    it = trainer.iteration
    exp = trainer.rollout(it)
    trainer.advantages(exp)
    state = copy.deepcopy(trainer.policy.trainable_state_dict())
    opt = copy.deepcopy(trainer.optimizer.state_dict())
    times: dict[str, list[float]] = {"flow_dppo": [], "ratio_clip": []}
    cfg0 = trainer.cfg
    for _ in range(repeats):
        for name in times:
            trainer.cfg = copy.deepcopy(cfg0)
            trainer.cfg.loss.name = name
            trainer.cfg.loss.clip_range = trainer.cfg.loss.clip_range or 1e-4
            t0 = time.perf_counter()
            trainer.update(exp, it)
            times[name].append(time.perf_counter() - t0)
            trainer.policy.load_trainable_state_dict(state)
            trainer.optimizer.load_state_dict(opt)
    trainer.cfg = cfg0
    return statistics.median(times["flow_dppo"]) / statistics.median(times["ratio_clip"])


def forward_counts(trainer: Trainer) -> tuple[float, float]:
    """(network calls per rollout step per forward batch, calls per trained step per micro-batch),
    on an iteration without the monitor's reference pass (with β = 0 nothing else uses it)."""
    cfg = trainer.cfg
    every = cfg.train.kl_ref_every
    cfg.train.kl_ref_every = 0  # an iteration without the (scheduled) reference pass
    counter = CallCounter(_network(trainer.policy))
    n_local = trainer.num_samples // trainer.acc.num_processes
    batches = -(-n_local // cfg.sampling.batch_size)
    it = trainer.iteration
    exp = trainer.rollout(it)
    rollout_calls = counter.n
    trainer.advantages(exp)
    counter.n = 0
    trainer.update(exp, it)
    update_calls = counter.n
    counter.handle.remove()
    cfg.train.kl_ref_every = every
    pairs = n_local * cfg.sampling.train_steps
    micro = cfg.optim.epochs * sum(
        -(-len(mb) // cfg.optim.micro_batch_size)
        for mb in torch.tensor_split(torch.arange(pairs), cfg.optim.updates_per_iter)
    )
    return rollout_calls / (batches * cfg.sampling.num_inference_steps), update_calls / micro


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Shapes model (smoke run)")
    ap.add_argument(
        "--tiny-sd3",
        action="store_true",
        help="the tiny random SD3 pipeline of the tests at 32², 10 steps, CFG 4.5, LoRA r32/α64 on "
        "the attention projections, 8 images (2 prompts × 4), 9 of 10 steps trained, 2 updates "
        "of micro-batches of 4, JPEG reward: the shape of Flow-GRPO's smallest job",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sets = ["eval.every=0", "train.save_every=100000", "train.diagnostic_terms=0", *a.set]
    sets += [f"train.threads={a.threads}", "sampling.untrained_precision=full"]
    tmp = Path(tempfile.mkdtemp())
    if a.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from trainer.tiny import build_tiny_checkpoint, tiny_overrides

        sets = tiny_overrides(build_tiny_checkpoint(tmp / "tiny.safetensors")) + sets
    if a.tiny_sd3:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
        from tiny_pipelines import build_tiny_sd3

        prompts = tmp / "prompts.txt"
        prompts.write_text("a red cube\na blue sphere\na green cone\na white cat\n")
        sets = [
            "model.family=sd3",
            f"model.pretrained={build_tiny_sd3(tmp)}",
            "model.resolution=32",
            "model.max_sequence_length=8",
            "model.lora_rank=32",
            "model.lora_alpha=64",
            "sampling.num_inference_steps=10",
            "sampling.guidance_scale=4.5",
            "sampling.train_pool=[0.0,0.9]",
            "sampling.train_steps=9",
            "sampling.prompts_per_iter=2",
            "sampling.group_size=4",
            "sampling.batch_size=4",
            "optim.updates_per_iter=2",
            "optim.micro_batch_size=4",
            "rewards=[{name: jpeg_incompressibility}]",
            f"data.train_prompts={prompts}",
            f"data.eval_prompts={prompts}",
            "data.balance_key=null",
            *sets,
        ]
    cfg = load_config(None, sets)
    trainer = Trainer(cfg, tmp / "run")
    s = cfg.sampling
    print(
        f"config: {trainer.num_samples} samples × T={s.num_inference_steps} (CFG {s.guidance_scale:g}), "
        f"K={s.train_steps} trained steps, N={cfg.optim.updates_per_iter} updates, micro-batch "
        f"{cfg.optim.micro_batch_size}, {a.threads} threads, loss {cfg.loss.name}",
        flush=True,
    )
    rows = []
    decode = DecodeTimer(trainer.policy)
    for i in range(a.warmup + a.iters):
        c0 = time.process_time()
        f_roll, f_upd = floor_times(trainer)
        c1 = time.process_time()
        t0 = time.perf_counter()
        m = trainer.step()
        real = time.perf_counter() - t0
        c2 = time.process_time()
        if i >= a.warmup:
            rows.append(
                {
                    "floor": f_roll + f_upd,
                    "floor_rollout": f_roll,
                    "floor_update": f_upd,
                    "real": real,
                    "rollout": m["time/rollout_s"],
                    "decode": decode.take(),
                    "reward_wait": m["time/reward_wait_s"],
                    "update": m["time/train_s"],
                    "cpu_ratio": (c2 - c1) / (c1 - c0),
                }
            )
        decode.take()
        print(f"iteration {i + 1}: real {real:.2f} s, floor {f_roll + f_upd:.2f} s", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    other = med["real"] - med["rollout"] - med["reward_wait"] - med["update"]
    per_roll, per_step = forward_counts(trainer)
    price = loss_price(trainer, repeats=max(3, a.iters // 2))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nmedians over {len(rows)} iterations after {a.warmup} warm-up:")
    print("| part | real s | floor s | real/floor |\n|---|---|---|---|")
    print(
        f"| rollout | {med['rollout']:.3f} | {med['floor_rollout']:.3f} | "
        f"{med['rollout'] / med['floor_rollout']:.2f} |"
    )
    print(f"| of the rollout: image decode | {med['decode']:.3f} | 0 | |")
    print(
        f"| update | {med['update']:.3f} | {med['floor_update']:.3f} | "
        f"{med['update'] / med['floor_update']:.2f} |"
    )
    print(f"| reward wait | {med['reward_wait']:.3f} | 0 | |")
    print(f"| advantages, logging, the rest | {other:.3f} | 0 | |")
    print(
        f"| **iteration** | {med['real']:.3f} | {med['floor']:.3f} | **{med['real'] / med['floor']:.2f}** |"
    )
    print(f"\nreal/floor = {med['real'] / med['floor']:.2f}")
    spread = sorted(r["real"] / r["floor"] for r in rows)
    q = len(spread) // 4
    print(f"real/floor per iteration: interquartile {spread[q]:.2f}-{spread[-1 - q]:.2f}")
    print(
        "real/floor in process CPU time (the reward and logging threads included; steadier on "
        f"a shared machine) = {med['cpu_ratio']:.2f}"
    )
    print(
        "rollout / its floor without the image decode = "
        f"{(med['rollout'] - med['decode']) / med['floor_rollout']:.2f}"
    )
    print(f"network calls per rollout step (per forward batch): {per_roll:g}")
    print(f"network calls per trained step (per micro-batch): {per_step:g}")
    print(f"Flow-DPPO update / ratio-clip update (identical batches): {price:.3f}")
    print(f"peak RSS: {peak_mb:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
