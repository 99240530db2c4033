"""The Flow-DPPO trainer: ``Trainer.step()`` = rollout → rewards → advantages → updates → log.

One process here; the same code runs under ``accelerate launch`` / ``torchrun`` with several
processes: the global batch of P·G samples is cut into contiguous per-process shares (groups may
span processes), rewards are gathered for the advantages, and gradients are summed across
processes after each mini-batch (see ``flowdppo.trainer.update``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from flowdppo.config import RunConfig, dump_config
from flowdppo.core import AdaptiveDelta, group_advantages, select_train_steps
from flowdppo.models._diffusers_common import prompt_cache_metrics
from flowdppo.rewards.compute import RewardError
from flowdppo.trainer.alarms import check_alarms
from flowdppo.trainer.build import build_policy, build_run_rewards, resolve_untrained_precision
from flowdppo.trainer.checkpoint import (
    RunDirError,
    check_run_dir,
    checkpoint_bytes,
    checkpoint_state,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_failure,
)
from flowdppo.trainer.collective import collective_failure
from flowdppo.trainer.crashpoints import crash_point
from flowdppo.trainer.data import (
    balance_by,
    load_prompts,
    prompt_indices,
    register_negative_prompts,
)
from flowdppo.trainer.ema import EMA
from flowdppo.trainer.evaluation import evaluate
from flowdppo.trainer.experience import Experience, collect, kl_to_reference
from flowdppo.trainer.guards import check_master_precision, noise_floor_warning
from flowdppo.trainer.logging import RunLogger, read_metrics
from flowdppo.trainer.sampling import step_progress
from flowdppo.trainer.update import NonFiniteError, update_policy


def flat_group_fraction(total: torch.Tensor, valid: torch.Tensor, group_size: int) -> float:
    """Fraction of the valid samples [N] whose group's valid (weighted-sum) rewards are all equal:
    with ``advantage.aggregate: sum`` their advantages are 0, they carry no signal. Dropped
    samples are ignored within their group."""
    t, v = total.view(-1, group_size), valid.view(-1, group_size)
    hi = t.masked_fill(~v, -float("inf")).amax(1)
    lo = t.masked_fill(~v, float("inf")).amin(1)  # a group with none valid: -inf != inf
    return float((hi == lo).repeat_interleave(group_size)[valid].float().mean())


def _init_kwargs(cfg: RunConfig) -> list[Any]:
    """The process group's options: ``train.collective_timeout_s`` (0: the backend's default)."""
    if cfg.train.collective_timeout_s <= 0:
        return []
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.collective_timeout_s))]


class Trainer:
    """Owns the policy, optimizer, EMA, rewards and run directory of one run."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False):
        from accelerate import Accelerator

        self.cfg, self.run_dir = cfg, Path(run_dir)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=_init_kwargs(cfg))
        n = cfg.sampling.prompts_per_iter * cfg.sampling.group_size
        if n % self.acc.num_processes:
            raise ValueError(
                f"sampling.prompts_per_iter × group_size = {n} must divide evenly over {self.acc.num_processes} processes"
            )
        self.num_samples = n
        # The policy's random initialisation (LoRA A) must be a function of the seed, identical
        # on every process: torch seeds its default generator differently in every process.
        torch.manual_seed(cfg.train.seed)
        self.policy = build_policy(cfg, self.acc.device)
        self.rewards = build_run_rewards(cfg)
        prompts, metadata = load_prompts(cfg.data.train_prompts)
        register_negative_prompts(self.policy, prompts, metadata, cfg.data.train_prompts)
        order = (
            balance_by(metadata, cfg.data.balance_key)
            if cfg.data.balance_key
            else range(len(prompts))
        )
        self.prompts, self.metadata = [prompts[i] for i in order], [metadata[i] for i in order]
        o = cfg.optim
        # foreach: one fused call per operation over all tensors (the per-tensor loop's result,
        # bit for bit, at a fraction of the calls; torch uses it by default only on CUDA)
        self.optimizer = torch.optim.AdamW(
            self.policy.trainable_parameters(),
            lr=o.lr,
            betas=o.betas,
            weight_decay=o.weight_decay,
            foreach=True,
        )
        check_master_precision(
            self.policy.trainable_state_dict().items(), o.lr, o.allow_low_precision_weights
        )
        self.ema = EMA(self.policy, o.ema_decay) if o.ema_decay > 0 else None
        self.iteration = 0
        self._saved_at: int | None = None
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if resume and ckpt is None:
            raise FileNotFoundError(f"--resume: {self.run_dir} has no checkpoint to resume from")
        lc = cfg.loss
        self.trust = (
            AdaptiveDelta(delta=lc.delta, target=lc.target_step_kl or lc.target_base_kl or 1.0)
            if lc.delta_schedule == "adaptive"
            else None
        )
        if ckpt is not None:
            self.iteration = load_checkpoint(ckpt, self.policy, self.optimizer, self.ema)
            self._saved_at = self.iteration
            if self.trust is not None and "trust" in (state := checkpoint_state(ckpt)):
                self.trust.load_state_dict(state["trust"])
        note = resolve_untrained_precision(cfg, self.acc.device)  # auto → full | reduced, saved
        if note and self.is_main:
            print(note, file=sys.stderr)
        self._check_run_dir()
        if self.is_main:
            dump_config(cfg, self.run_dir / "config.yaml")
        # A fresh run starts metrics.jsonl empty (-1: no line kept); a resumed one keeps the lines
        # up to its checkpoint's iteration (the lines after it are about to be redone).
        self.logger = RunLogger(
            self.run_dir, enabled=self.is_main, resume_iter=self.iteration if ckpt else -1
        )
        self._diagnostics: list[dict[str, float]] | None = None  # set per iteration by step()
        self._alarm_fired = False  # set by evaluate(): an alarm fired at the last evaluation
        self._floor_warned = False  # the noise-floor warning is given once per process
        self._delta_floor_warned = False  # and the adaptive δ's at its lower bound
        self._skipped_in_a_row = 0  # updates skipped (non-finite) since an iteration skipped none
        self._progress = False  # progress bars, set by train()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    def _check_run_dir(self) -> None:
        """Before anything is written: the run directory is writable and its disk can hold the
        checkpoints (``check_run_dir``); every process raises when the main one cannot."""
        problem = None
        if self.is_main:
            try:
                check_run_dir(self.run_dir, checkpoint_bytes(self.policy, self.ema))
            except RunDirError as err:
                problem = err
        if self._on_any_process(problem is not None):
            raise problem or RunDirError(f"process 0 cannot use {self.run_dir} (see its error)")

    def _reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        if self.acc.num_processes == 1:
            return t
        # Back on t's own device: gradients live on the parameters' device (a CPU copy of a
        # CUDA gradient cannot be assigned to ``p.grad``).
        out = (
            self.acc.reduce(t.to(self.acc.device), reduction=op)
            if op == "sum"
            else _reduce_extreme(self.acc, t, op)
        )
        return out.to(t.device)

    def _share(self) -> range:
        per = self.num_samples // self.acc.num_processes
        return range(self.acc.process_index * per, (self.acc.process_index + 1) * per)

    # -- the iteration, step by step -------------------------------------------------------------
    def rollout(self, it: int) -> Experience:
        s = self.cfg.sampling
        idx = prompt_indices(len(self.prompts), s.prompts_per_iter, it, self.cfg.train.seed)
        ids = list(self._share())
        prompts = [self.prompts[idx[j // s.group_size]] for j in ids]
        meta = [self.metadata[idx[j // s.group_size]] for j in ids]
        g = torch.Generator().manual_seed(self.cfg.train.seed * 31_337 + it)
        steps = select_train_steps(
            s.num_inference_steps,
            pool=s.train_pool,
            k=s.train_steps,
            mode=s.train_mode,
            generator=g,
        )
        exp = collect(self.policy, self.cfg, prompts, meta, ids, it, steps, self.rewards, self.pool)
        exp.batch_metadata = [self.metadata[i] for i in idx]
        return exp

    def advantages(self, exp: Experience) -> dict[str, float]:
        """GRPO advantages over the gathered global batch; invalid (dropped) samples get A = 0."""
        assert exp.rewards is not None
        rb = exp.rewards
        scores = self.acc.gather(rb.matrix().to(self.acc.device)).cpu()  # [N, R], sample order
        valid = self.acc.gather(rb.valid.to(self.acc.device)).cpu()
        if not bool(valid.any()):
            raise RewardError(
                f"iteration {self.iteration + 1}: every sample of the global batch was dropped by the rewards "
                f"({self.num_samples} samples; reward_on_error=drop); see the warnings above for the errors"
            )
        groups = torch.arange(self.num_samples) // self.cfg.sampling.group_size
        adv = torch.zeros(self.num_samples)
        a = self.cfg.advantage
        adv[valid] = group_advantages(
            scores[valid],
            groups[valid],
            weights=rb.weights,
            std_mode=a.std_mode,
            aggregate=a.aggregate,
        )
        exp.advantages = adv[exp.sample_ids].to(self.policy.device)  # beside the log-probs
        self._valid = valid
        total_all = scores @ rb.weights
        total = total_all[valid]
        out = {
            "reward/mean": float(total.mean()),
            "reward/std": float(total.std(unbiased=False)),
            "reward/dropped": float((~valid).sum()),
            "adv/abs_mean": float(adv[valid].abs().mean()),
        }
        out.update({f"reward/{n}": float(scores[valid, j].mean()) for j, n in enumerate(rb.names)})
        g = self.cfg.sampling.group_size
        out["adv/zero_frac"] = flat_group_fraction(total_all, valid, g)
        cats = [exp.batch_metadata[j // g].get("category") for j in range(self.num_samples)]
        for cat in sorted({c for c in cats if isinstance(c, str)}):
            sel = torch.tensor([c == cat for c in cats]) & valid
            if bool(sel.any()):
                out[f"reward_category/{cat}"] = float(total_all[sel].mean())
        return out

    def update(self, exp: Experience, it: int) -> dict[str, float]:
        after = self.ema.update if self.ema is not None else (lambda: None)
        return update_policy(
            self.policy,
            exp,
            self.cfg,
            self.optimizer,
            it,
            self.num_samples,
            self._valid,
            self._reduce,
            after,
            delta=None if self.trust is None else self.trust.delta,
            diagnostics=self._diagnostics,
            processes=self.acc.num_processes,
        )

    def step(self) -> dict[str, float]:
        """One iteration; returns (and logs) its metrics."""
        it = self.iteration
        t0 = time.perf_counter()
        stats = getattr(self.policy, "cache_stats", None)  # the prompt-embedding cache, if any
        cache_before = stats() if stats is not None else None
        exp = self.rollout(it)
        metrics = dict(exp.timings)
        metrics.update(self.advantages(exp))
        kl_ref = kl_to_reference(exp, self.cfg.loss.reduction)
        t1 = time.perf_counter()
        self._diagnostics = [] if self.cfg.train.diagnostic_terms > 0 else None
        metrics.update(self.update(exp, it))
        metrics["time/train_s"] = time.perf_counter() - t1
        if self._diagnostics and self.is_main:
            write_diagnostics(self.run_dir, it + 1, self._diagnostics)
        if kl_ref is not None:  # the same iterations on every process (RunConfig.reference_pass)
            metrics.update(self._kl_metrics(kl_ref))
        if self.trust is not None:
            metrics.update(self._adapt_delta(metrics, it))
        if stats is not None:
            metrics.update(prompt_cache_metrics(cache_before, stats(), self._reduce))
        metrics["time/iter_s"] = time.perf_counter() - t0
        floor_note = noise_floor_warning(
            metrics["check/noise_floor_kl"],
            self.trust.delta if self.trust is not None else self.cfg.loss.delta,
            self.cfg.train.noise_floor_factor if self.cfg.loss.name == "flow_dppo" else 0.0,
        )
        if floor_note and not self._floor_warned:
            self._floor_warned = True
            warnings.warn(f"iteration {it + 1}: {floor_note}", stacklevel=2)
        if not metrics["check/onpolicy_kl_max"] <= self.cfg.train.on_policy_tol:  # NaN fails too
            warnings.warn(
                f"iteration {it}: on-policy check failed: KL(old‖new) before the first update = "
                f"{metrics['check/onpolicy_kl_max']:.3g} > train.on_policy_tol={self.cfg.train.on_policy_tol:g}; "
                "the forward pass depends on batch composition or precision",
                stacklevel=2,
            )
        self.iteration = it + 1
        self.logger.log("train", self.iteration, metrics)
        return metrics

    def _adapt_delta(self, metrics: dict[str, float], it: int) -> dict[str, float]:
        """Move the adaptive δ by this iteration's measured KL (docs/algorithm.md §4): the
        old-to-new KL against ``loss.target_step_kl``, or the rollout's KL to the base against
        ``loss.target_base_kl`` spread linearly over ``train.max_iters``."""
        assert self.trust is not None
        lc = self.cfg.loss
        if lc.target_base_kl is not None:
            measured = metrics["kl/ref_mean"]
            target = lc.target_base_kl * (it + 1) / self.cfg.train.max_iters
        else:
            measured, target = metrics["kl/old_new_mean"], self.trust.target
        used = self.trust.delta
        self.trust.update(measured, target)
        at_bound = used <= self.trust.min_delta and measured > self.trust.band * target
        if at_bound and not self._delta_floor_warned:  # once per run: δ can do no more
            self._delta_floor_warned = True
            warnings.warn(
                f"iteration {it + 1}: the adaptive δ is at its lower bound "
                f"{self.trust.min_delta:g} and the measured KL {measured:.3g} is still above "
                f"{self.trust.band:g} × the target {target:.3g}: the first update of each "
                "rollout is on-policy (KL 0 < any δ), so δ cannot hold this target; lower "
                "optim.lr, optim.updates_per_iter or optim.epochs, or set loss.beta (docs/tuning.md)",
                stacklevel=2,
            )
        return {"trust/delta": used, "trust/measured_kl": measured, "trust/target_kl": target}

    def _kl_metrics(self, kl_ref: torch.Tensor) -> dict[str, float]:
        """kl/ref_mean and kl/ref_max over all processes' [B, K] terms."""
        kl_sum = self._reduce(
            torch.tensor([kl_ref.sum().item(), kl_ref.numel()], dtype=torch.float64), "sum"
        )
        top = kl_ref.max().item() if kl_ref.numel() else 0.0
        return {
            "kl/ref_mean": float(kl_sum[0] / kl_sum[1]),
            "kl/ref_max": float(self._reduce(torch.tensor([top]), "max")[0]),
        }

    # -- the loop -------------------------------------------------------------------------------
    def evaluate(self, grid: bool = True) -> dict[str, float]:
        if not self.is_main:
            return {}
        t0 = time.perf_counter()
        path = self.run_dir / "samples" / f"iter_{self.iteration:06d}.png" if grid else None
        ctx = self.ema.swapped_in() if self.ema is not None else nullcontext()
        with ctx, step_progress(f"eval {self.iteration}", self._progress):
            metrics = evaluate(self.policy, self.cfg, self.rewards, path)
        metrics["time/eval_s"] = time.perf_counter() - t0
        alarms, messages = self._alarms(metrics)
        metrics.update(alarms)
        crash_point("eval")
        self.logger.log("eval", self.iteration, metrics)
        for msg in messages:
            warnings.warn(f"iteration {self.iteration}: {msg}", stacklevel=2)
        self._alarm_fired = bool(messages)
        return metrics

    def _alarms(self, metrics: dict[str, float]) -> tuple[dict[str, float], list[str]]:
        """The alarms of this evaluation, against the run's logged history (flowdppo.trainer.alarms)."""
        try:
            rows = read_metrics(self.run_dir)
        except FileNotFoundError:  # nothing logged yet: this is the base's evaluation
            rows = []
        evals = [r for r in rows if r["kind"] == "eval" and r["iter"] < self.iteration]
        return check_alarms(self.cfg.alarms, [*evals, {**metrics, "iter": self.iteration}])

    def save(self) -> None:
        """Write the checkpoint (main process); a failed write (a full disk, lost permissions)
        raises ``CheckpointWriteError`` on every process, the previous checkpoint intact."""
        failed: OSError | None = None
        if self.is_main:
            extra = None if self.trust is None else {"trust": self.trust.state_dict()}
            try:
                save_checkpoint(
                    self.run_dir, self.iteration, self.policy, self.optimizer, self.ema, extra=extra
                )
            except OSError as err:
                failed = err
        if self._on_any_process(failed is not None):  # a collective: every process waits here
            raise write_failure(self.run_dir, self.iteration, failed) from failed
        self._saved_at = self.iteration

    def _count_skipped(self, metrics: dict[str, float]) -> bool:
        """Add this iteration's skipped updates to the count since the last iteration that skipped
        none; True when it reaches train.max_skipped_updates."""
        skipped = int(metrics.get("fault/skipped_updates", 0))
        self._skipped_in_a_row = self._skipped_in_a_row + skipped if skipped else 0
        return self._too_many_skipped()

    def _too_many_skipped(self) -> bool:
        n = self.cfg.train.max_skipped_updates
        return n > 0 and self._skipped_in_a_row >= n

    def _stop_requested(self, local: bool) -> bool:
        """Whether any process was interrupted (all processes must leave the loop together)."""
        return self._on_any_process(local)

    def _on_any_process(self, local: bool) -> bool:
        """Whether ``local`` is true on any process (a collective: every process calls it)."""
        if self.acc.num_processes == 1:
            return local
        return bool(self._reduce(torch.tensor([float(local)]), "max")[0] > 0)

    def train(self, max_iters: int | None = None, progress: bool = True) -> None:
        """Run until ``max_iters`` iterations are done.

        Ctrl-C (SIGINT) or SIGTERM (what schedulers and ``docker stop`` send) lets the current
        iteration finish, saves a checkpoint of it and raises ``StopRequested`` (a
        KeyboardInterrupt); a second signal aborts at once without saving (the weights may then be
        half-way through an iteration's updates, which no checkpoint may hold: its iteration
        number says which rollouts come next, so it must be an iteration boundary). After
        ``train.max_skipped_updates`` optimizer updates skipped for non-finite values (counted
        since the last iteration that skipped none),
        it saves a checkpoint (its weights are the last finite ones) and raises
        ``NonFiniteError``.
        """
        t = self.cfg.train
        end = max_iters if max_iters is not None else t.max_iters
        e = self.cfg.eval.every
        self._progress = progress and self.is_main  # the evaluations' bars too
        bar = tqdm(
            total=end,
            initial=self.iteration,
            desc="train",
            unit="it",
            disable=not (progress and self.is_main),
        )
        try:
            with _deferred_stop() as interrupted:
                deadline = (
                    time.monotonic() + 60 * t.max_minutes if t.max_minutes > 0 else float("inf")
                )
                if self.iteration == 0 and e > 0 and not self.logger.has("eval", 0):
                    self.evaluate()  # not again when resuming a checkpoint of iteration 0
                    bar.unpause()  # the rate, and the ETA, are the iterations' alone
                kl_shown = "n/a"  # the last kl/ref_mean (measured every train.kl_ref_every)
                while self.iteration < end and not self._stop_requested(bool(interrupted())):
                    m = self.step()
                    crash_point("logged")
                    if self._count_skipped(m):
                        break
                    if self._stop_requested(time.monotonic() >= deadline):  # budget spent: end here
                        end = self.iteration
                        bar.total = end
                    bar.update(1)
                    if "kl/ref_mean" in m:
                        kl_shown = f"{m['kl/ref_mean']:.2e}"
                    bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl_ref=kl_shown)
                    if (e > 0 and self.iteration % e == 0) or self.iteration == end:
                        ev = self.evaluate(
                            grid=self.iteration % max(t.sample_every, 1) == 0
                            or self.iteration == end
                        )
                        bar.unpause()
                        if "eval/strict_overall" in ev:
                            bar.write(
                                f"iter {self.iteration}: eval strict {100 * ev['eval/strict_overall']:.1f}%"
                            )
                        if self.cfg.alarms.stop and self._stop_requested(self._alarm_fired):
                            bar.write(
                                f"an alarm fired (alarms.stop): stopping at iteration {self.iteration}"
                            )
                            end = self.iteration  # saved below like a run's last iteration
                            bar.total = end
                    if self.iteration % t.save_every == 0 or self.iteration == end:
                        self.save()
                signum = interrupted() or signal.SIGINT  # other processes saw no signal
            stuck = self._too_many_skipped()
            if self.iteration < end or stuck:  # stopped at an iteration boundary
                why = "non-finite updates" if stuck else "interrupted"
                bar.write(
                    f"{why}: saving iteration {self.iteration} to {self.run_dir}/checkpoints ..."
                )
                if self._saved_at != self.iteration:
                    self.save()
                if stuck:
                    raise NonFiniteError(
                        f"{self._skipped_in_a_row} optimizer updates were skipped for non-finite "
                        f"values since the last iteration that skipped none (train.max_skipped_updates="
                        f"{self.cfg.train.max_skipped_updates}; warnings above name the kind); "
                        f"the weights of iteration {self.iteration} are saved in "
                        f"{self.run_dir}/checkpoints"
                    )
                raise StopRequested(signum)
        except RuntimeError as err:  # another process stopped or hung: one line, not gloo's
            failure = collective_failure(err)
            if failure is None:
                raise
            raise failure from err
        finally:
            bar.close()
            self.logger.close()
            self.pool.shutdown(wait=True)
            if self.acc.num_processes > 1:
                # Exiting with the gloo process group alive aborts a process now and then
                # ("terminate called without an active exception", SIGABRT) after a good run.
                self.acc.end_training()


class StopRequested(KeyboardInterrupt):
    """``Trainer.train`` stopped on a signal after saving; ``signum`` is the signal's number
    (the command line exits with 128 + signum: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def write_diagnostics(run_dir: Path, iteration: int, rows: list[dict[str, float]]) -> None:
    """Append one iteration's sampled terms to ``RUN/diagnostics/ratio_kl.jsonl`` (a resumed run
    writes its redone iterations again; readers keep the last block of an iteration)."""
    path = run_dir / "diagnostics" / "ratio_kl.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"iter": iteration, "terms": rows}) + "\n")


@contextmanager
def _deferred_stop() -> Iterator[Callable[[], int]]:
    """Inside: the first SIGINT or SIGTERM only records its number (the yielded function returns
    it; 0 before any); a second one raises KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    hits: list[int] = []

    def handler(signum: int, frame: object) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this iteration and saving it (send it again to abort "
            "without saving)",
            file=sys.stderr,
        )

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield lambda: hits[0] if hits else 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _reduce_extreme(acc, t: torch.Tensor, op: str) -> torch.Tensor:
    gathered = acc.gather(t.to(acc.device).reshape(1, -1))  # [P, n]
    return gathered.max(0).values if op == "max" else gathered.min(0).values
