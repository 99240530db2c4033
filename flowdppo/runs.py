"""A run directory: its config, its policy at the latest checkpoint, the config a resumed run
continues with, and the names of its evaluations."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from flowdppo.cli_errors import UserError
from flowdppo.config import RunConfig, load_config


def run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run saved (``RUN/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a flowdppo run directory?")
    return load_config(path)


# Keys that cannot change what a resumed run computes: its checkpoints' cadence and budget.
RESUME_SAFE_KEYS = ("train.save_every", "train.sample_every", "train.max_minutes")

# The files a run writes before its first checkpoint (what starting it over removes).
RUN_FILES = ("metrics.jsonl", "config.yaml", "config_changes.jsonl", "tensorboard", "samples")


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every config value that differs."""
    from flowdppo.config import config_to_dict

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, v in d.items():
            name = f"{prefix}.{key}" if prefix else key
            # sections recurse; a field's own dict value (a reward's kwargs) is one value
            out.update(flat(v, name) if isinstance(v, dict) and "." not in name else {name: v})
        return out

    a, b = flat(config_to_dict(old)), flat(config_to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def has_checkpoint(run_dir: str | Path) -> bool:
    from flowdppo.trainer.checkpoint import latest_checkpoint

    return latest_checkpoint(Path(run_dir)) is not None


def clear_unsaved_run(run_dir: str | Path) -> list[str]:
    """Remove what a run wrote before it was stopped without any checkpoint (metrics, config,
    samples, TensorBoard events, temporary checkpoint folders), so that it starts over cleanly;
    files flowdppo did not write are left. Returns the names removed."""
    import shutil

    run = Path(run_dir)
    if has_checkpoint(run):
        raise ValueError(f"{run} holds a checkpoint: it is a saved run, not cleared")
    gone = []
    for name in (*RUN_FILES, "checkpoints"):
        path = run / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        gone.append(name)
    return gone


def load_run_policy(
    run_dir: str | Path,
    *,
    use_ema: bool | None = None,
    device: str | None = None,
    require_checkpoint: bool = False,
) -> tuple[Any, RunConfig, int]:
    """(policy with the latest checkpoint's weights, config, iteration). EMA weights by default
    when the run kept an EMA; iteration 0 (the base model) when there is no checkpoint yet, or
    an error with ``require_checkpoint`` (evaluating or exporting a run that saved nothing)."""
    from flowdppo.trainer.build import build_policy
    from flowdppo.trainer.checkpoint import latest_checkpoint, load_trainable

    cfg = run_config(run_dir)
    if require_checkpoint:
        saved_checkpoint(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy = build_policy(cfg, dev)
    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        return policy, cfg, 0
    ema = (ckpt / "ema.safetensors").exists() if use_ema is None else use_ema
    load_trainable(policy, ckpt, use_ema=ema)
    return policy, cfg, int(ckpt.name.split("_")[1])


def saved_checkpoint(run_dir: str | Path) -> Path:
    """The run's latest checkpoint; an error when it saved none (evaluating or exporting it)."""
    from flowdppo.trainer.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / 'checkpoints'} holds no checkpoint: the run saved none yet "
            f"(resume it with `flowdppo resume {run_dir}`)"
        )
    return ckpt


def export_run_lora(run_dir: str | Path, out: str | Path, *, use_ema: bool | None = None) -> Path:
    """Write the latest checkpoint's LoRA of a diffusers run as a diffusers LoRA folder
    (``flowdppo.models.export``), from the checkpoint's tensors and the run's LoRA settings:
    the pipeline is never loaded. EMA weights by default when the run kept an EMA."""
    from flowdppo.models.export import export_lora_weights, lora_metadata
    from flowdppo.trainer.checkpoint import trainable_tensors

    cfg = run_config(run_dir)
    ckpt = saved_checkpoint(run_dir)
    ema = (ckpt / "ema.safetensors").exists() if use_ema is None else use_ema
    lora = trainable_tensors(ckpt, use_ema=ema)
    m = cfg.model
    meta = lora_metadata(lora, m.lora_rank, m.lora_alpha, m.lora_target_modules)
    return export_lora_weights(lora, out, family=m.family, metadata=meta)


def start_over(out: Path, why: str) -> None:
    """Clear what a run stopped before its first checkpoint left, and say so."""
    gone = clear_unsaved_run(out)
    if gone:
        print(f"{out}: {why}; starting it over (removed: {', '.join(gone)})", file=sys.stderr)


def resume_config(out: Path, config: str | None, sets: list[str], allow_change: bool) -> RunConfig:
    """The config of a resumed run: the saved one, or the given one (``config``, ``sets``: the
    ``CONFIG`` and ``--set`` of the command) if it equals the saved one up to
    ``RESUME_SAFE_KEYS``, or with ``allow_change`` (``--allow-config-change``; the change is
    appended to ``RUN/config_changes.jsonl``)."""
    saved = run_config(out)  # a clear error when --out is not a run directory
    cfg = load_config(out / "config.yaml" if config is None else config, sets)
    if cfg.sampling.untrained_precision == "auto":  # what auto picked is saved: keep it
        cfg.sampling.untrained_precision = saved.sampling.untrained_precision
    changed = config_changes(saved, cfg)
    unsafe = {k: v for k, v in changed.items() if k not in RESUME_SAFE_KEYS}
    if unsafe and not allow_change:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in unsafe.items())
        raise UserError(
            f"resuming {out} with a changed config ({shown}) would not continue the same run; "
            "pass --allow-config-change to go on anyway (recorded in config_changes.jsonl), or "
            "start a new run with another --out"
        )
    if changed:
        from flowdppo.trainer.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(out)
        row = {
            "iter": int(ckpt.name.split("_")[1]) if ckpt else 0,
            "changes": {k: [old, new] for k, (old, new) in changed.items()},
        }
        with (out / "config_changes.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{out}: resuming with config changes {sorted(changed)}", file=sys.stderr)
    return cfg


def prepare_run(
    out: Path, config: str | None, sets: list[str], resume: bool, allow_change: bool
) -> tuple[RunConfig, bool]:
    """The config for ``train``/``resume``/``demo`` into ``out`` and whether to resume from its
    checkpoint. ``resume`` with a checkpoint: :func:`resume_config`; ``resume`` without one (a
    run stopped before its first checkpoint): the saved (or given) config, started over. A new
    run refuses a directory that holds a checkpointed run and clears one that saved nothing."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if resume and has_checkpoint(out):
        return resume_config(out, config, sets, allow_change), True
    if resume:
        if config is None:
            run_config(out)  # one clear line when `out` holds no run
        cfg = load_config(out / "config.yaml" if config is None else config, sets)
        start_over(out, "the run saved no checkpoint before it stopped")
        return cfg, False
    cfg = load_config(config, sets)
    if has_checkpoint(out):
        raise UserError(f"{out} already holds a run; use `flowdppo resume {out}` or another --out")
    if any((out / f).exists() for f in (*RUN_FILES, "checkpoints")):
        start_over(out, "it holds a run stopped before its first checkpoint")
    return cfg, False


def eval_dir_name(it: int, split: str, n: int, steps: int, guidance: float, run: RunConfig) -> str:
    """``iter_N`` for the run's own evaluation settings, with a suffix for each one changed
    (``_train``, ``_n100``, ``_steps10``, ``_cfg1``), so that evaluations with other settings
    never overwrite each other."""
    ev = run.eval
    name = f"iter_{it:06d}" + ("_train" if split == "train" else "")
    name += f"_n{n}" if n != ev.per_category else ""
    name += f"_steps{steps}" if steps != ev.num_inference_steps else ""
    return name + (f"_cfg{guidance:g}" if guidance != run.eval_guidance_scale else "")


def accuracy_lines(run_dir: str | Path) -> list[str]:
    """One line per evaluation of a run: its held-out strict accuracy per category (Shapes)."""
    from flowdppo.trainer.logging import read_metrics

    lines = []
    for row in read_metrics(Path(run_dir), "eval"):
        acc = {
            k.removeprefix("eval/strict_"): v
            for k, v in row.items()
            if k.startswith("eval/strict_")
        }
        lines.append(
            f"iteration {row['iter']:3d}: "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items())
        )
    return lines


def sample_run(
    run_dir: str | Path,
    prompts: list[str],
    n: int,
    steps: int | None,
    guidance: float | None,
    seed: int,
    out: str | Path,
    negative_prompt: str | None = None,
) -> Path:
    """``flowdppo sample``: ``n`` ODE samples of each prompt from the run's latest policy (steps
    and guidance None: the run's evaluation settings), in a grid at ``out`` (videos: a GIF);
    ``negative_prompt``: the negative branch of CFG for every prompt. Returns the file written."""
    from flowdppo.trainer.sampling import generate
    from flowdppo.viz import save_samples

    empty = [i + 1 for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise UserError(f"flowdppo sample: --prompt number {empty[0]} is empty")
    if guidance is not None and not guidance >= 1.0:
        raise UserError(f"flowdppo sample: --cfg must be >= 1.0 (1 = no guidance), got {guidance}")
    policy, cfg, _ = load_run_policy(run_dir)
    guidance = cfg.eval_guidance_scale if guidance is None else guidance
    if negative_prompt is not None:
        uses = getattr(policy, "uses_negative_prompts", None)
        if uses is None or not uses():
            raise UserError(
                f"flowdppo sample: --negative-prompt: model.family {cfg.model.family!r} has no "
                "negative prompt to set (its guidance has no negative branch; FLUX.1: "
                "model.true_cfg_scale > 1)"
            )
        if guidance <= 1.0:
            raise UserError(
                f"flowdppo sample: --negative-prompt needs guidance, but the guidance scale is "
                f"{guidance} (set --cfg > 1)"
            )
        policy.set_negative_prompts(dict.fromkeys(prompts, negative_prompt))
    every = [p for p in prompts for _ in range(n)]
    steps = steps or cfg.eval.num_inference_steps
    images = generate(policy, every, steps=steps, guidance_scale=guidance, seed=seed)
    return save_samples(images, every, out, cols=n)
