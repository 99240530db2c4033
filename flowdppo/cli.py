"""The ``flowdppo`` command line. Every command is a thin call into the library.

flowdppo train [CONFIG] [--set k=v ...] [--max-iters N] --out DIR [--resume]
flowdppo resume DIR [--max-iters N]
flowdppo eval --run DIR [--n N] [--steps S] [--cfg G] [--split test|train]
flowdppo sample --run DIR --prompt P [--prompt P ...] [--n 4] --out grid.png
flowdppo plot --run DIR [--run DIR ...] --out plot.png
flowdppo export --run DIR --out DIR
flowdppo demo [--out DIR]
flowdppo shapes pretrain|eval|render ...
flowdppo reward-server --reward NAME --port P
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowdppo.config import ConfigError
from flowdppo.config.schema import RunConfig


def _train(a: argparse.Namespace) -> int:
    from flowdppo.config import load_config
    from flowdppo.runs import run_config
    from flowdppo.trainer.trainer import Trainer

    if a.resume and a.config is None:
        run_config(a.out)  # a clear error when --out is not a run directory
        cfg = load_config(Path(a.out) / "config.yaml", a.set)  # --set applies on top of it
    elif a.resume:
        cfg = load_config(a.config, a.set)
    else:
        cfg = load_config(a.config, a.set)
        # Any trace of a run counts (not only a checkpoint): a fresh run would otherwise append
        # its metric lines to the old run's metrics.jsonl.
        if any((Path(a.out) / f).exists() for f in ("checkpoints", "metrics.jsonl", "config.yaml")):
            raise SystemExit(
                f"error: {a.out} already holds a run; use `flowdppo resume {a.out}` or another --out"
            )
    trainer = Trainer(cfg, a.out, resume=a.resume)
    if cfg.model.compile:
        print(
            "model.compile: the first iteration and the first evaluation also compile the "
            "network (about a minute on a CPU); the ones after run faster",
            file=sys.stderr,
        )
    try:
        trainer.train(a.max_iters)
    except KeyboardInterrupt:
        print(f"stopped; resume with: flowdppo resume {a.out}", file=sys.stderr)
        return 130
    print(
        f"run saved in {a.out} (metrics.jsonl, samples/, checkpoints/); plot with: flowdppo plot --run {a.out}"
    )
    return 0


def _resume(a: argparse.Namespace) -> int:
    a.out, a.config, a.set, a.resume = a.run, None, [], True
    return _train(a)


def _write_eval(metrics: dict, table_md: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    (out / "eval.md").write_text(table_md)
    print(table_md)
    print(f"written: {out / 'eval.json'}, {out / 'eval.md'}, {out / 'grid.png'}")


def _shapes_eval_policy(
    policy, out: Path, n: int, steps: int, cfg_scale: float, seed: int, split: str = "test"
) -> None:
    from flowdppo.shapes.evaluate import eval_specs, generate, markdown_table, score_eval
    from flowdppo.viz import save_grid

    specs = eval_specs(n, split=split)
    prompts = [s.text for s in specs]
    images = generate(
        policy, prompts, steps=steps, guidance_scale=cfg_scale, seed=seed, progress=True
    )
    res = score_eval(images, specs)
    idx = [i for i in range(0, len(specs), max(1, len(specs) // 48))][:48]
    out.mkdir(parents=True, exist_ok=True)
    save_grid(
        images[idx],
        [prompts[i] for i in idx],
        out / "grid.png",
        marks=[bool(res.passed[i]) for i in idx],
    )
    title = (
        f"Shapes evaluation ({split} prompts): {n} samples/category, ODE {steps} steps, "
        f"CFG {cfg_scale}"
    )
    _write_eval({**res.metrics, "table": res.table}, markdown_table(res, title), out)


def _eval_dir_name(it: int, split: str, n: int, steps: int, guidance: float, run: RunConfig) -> str:
    """``iter_N`` for the run's own evaluation settings, with a suffix for each one changed
    (``_train``, ``_n100``, ``_steps10``, ``_cfg1``), so that evaluations with other settings
    never overwrite each other."""
    ev = run.eval
    name = f"iter_{it:06d}" + ("_train" if split == "train" else "")
    name += f"_n{n}" if n != ev.per_category else ""
    name += f"_steps{steps}" if steps != ev.num_inference_steps else ""
    return name + (f"_cfg{guidance:g}" if guidance != run.eval_guidance_scale else "")


def _eval(a: argparse.Namespace) -> int:
    from flowdppo.runs import load_run_policy, run_config
    from flowdppo.trainer.build import build_run_rewards
    from flowdppo.trainer.evaluation import evaluate

    if a.cfg is not None and a.cfg < 1.0:
        raise SystemExit(f"flowdppo eval: --cfg must be >= 1.0 (1 = no guidance), got {a.cfg}")
    prompts = run_config(a.run).data.eval_prompts
    shapes = prompts.startswith("shapes:")
    if a.split != "test" and not shapes:  # checked before the model is loaded
        raise SystemExit(
            f"flowdppo eval: --split {a.split} is for Shapes runs; {Path(a.run) / 'config.yaml'} "
            f"evaluates data.eval_prompts={prompts!r}"
        )
    policy, cfg, it = load_run_policy(a.run)
    n, steps = a.n or cfg.eval.per_category, a.steps or cfg.eval.num_inference_steps
    g = cfg.eval_guidance_scale if a.cfg is None else a.cfg
    out = Path(a.run) / "eval" / _eval_dir_name(it, a.split, n, steps, g, cfg)
    if shapes:
        _shapes_eval_policy(policy, out, n, steps, g, cfg.eval.seed, a.split)
        return 0
    m = evaluate(policy, cfg, build_run_rewards(cfg), out / "grid.png", n, steps, g)
    _write_eval(m, "\n".join(f"- {k}: {v:.4f}" for k, v in m.items()) + "\n", out)
    return 0


def _sample(a: argparse.Namespace) -> int:
    from flowdppo.runs import load_run_policy
    from flowdppo.shapes.evaluate import generate
    from flowdppo.viz import save_grid

    policy, cfg, _ = load_run_policy(a.run)
    prompts = [p for p in a.prompt for _ in range(a.n)]
    images = generate(
        policy,
        prompts,
        steps=a.steps or cfg.eval.num_inference_steps,
        guidance_scale=cfg.eval_guidance_scale if a.cfg is None else a.cfg,
        seed=a.seed,
    )
    print(save_grid(images, prompts, a.out, cols=a.n))
    return 0


def _plot(a: argparse.Namespace) -> int:
    from flowdppo.plots import plot_runs

    print(plot_runs(a.run, a.out))
    return 0


def _export(a: argparse.Namespace) -> int:
    from flowdppo.runs import load_run_policy

    policy, cfg, _ = load_run_policy(a.run, use_ema=a.ema)
    if cfg.model.family == "shapes":
        raise SystemExit(
            "error: export writes diffusers formats; a Shapes run's weights are in its checkpoints/"
        )
    from flowdppo.models.export import export_full, export_lora

    print((export_full if cfg.model.full_finetune else export_lora)(policy, a.out))
    return 0


def _demo(a: argparse.Namespace) -> int:
    from flowdppo.config import load_config
    from flowdppo.plots import plot_runs
    from flowdppo.trainer.trainer import Trainer

    out = Path(a.out)
    resume = (out / "checkpoints" / "latest").exists()
    trainer = Trainer(load_config(None, a.set), out, resume=resume)
    try:
        trainer.train()
    except KeyboardInterrupt:  # as `train`: a clean stop, not a traceback
        print(f"stopped; run `flowdppo demo --out {out}` again to resume", file=sys.stderr)
        return 130
    from flowdppo.trainer.logging import read_metrics

    for row in read_metrics(out, "eval"):  # held-out strict accuracy at each evaluation
        acc = {
            k.removeprefix("eval/strict_"): v
            for k, v in row.items()
            if k.startswith("eval/strict_")
        }
        print(
            f"iteration {row['iter']:3d}: "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items())
        )
    print(
        f"demo done: {out}/metrics.jsonl, samples: {out}/samples/, curves: {plot_runs([out], out / 'curves.png')}"
    )
    return 0


def _category_weights(items: list[str] | None) -> dict[str, float] | None:
    """``["position=3", ...]`` → {"position": 3.0}; the names and values are checked by
    ``flowdppo.shapes.pretrain`` (a ValueError naming the flag)."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value) if sep else float("nan")
        except ValueError:
            out[name] = float("nan")
    return out


def _shapes_pretrain(a: argparse.Namespace) -> int:
    from flowdppo.shapes.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        steps=a.steps,
        seed=a.seed,
        threads=a.threads,
        lr=a.lr,
        init=a.init,
        sigma_logit_mean=a.sigma_logit_mean,
        category_weights=_category_weights(a.category_weight),
        prior_batch=a.prior_batch,
        prior_scenes=a.prior_scenes,
        prior_weight=a.prior_weight,
        prior_categories=a.prior_category,
        flow_weight=a.flow_weight,
        caption_noise=a.caption_noise,
        caption_noise_kind=a.caption_noise_kind,
    )
    from flowdppo.shapes.model import ShapesModelConfig

    print(pretrain(a.out, cfg, ShapesModelConfig(velocity_skip=a.velocity_skip)))
    return 0


def _shapes_eval(a: argparse.Namespace) -> int:
    import torch

    from flowdppo.models.shapes import ShapesPolicy

    if a.threads:
        torch.set_num_threads(a.threads)
    policy = ShapesPolicy.from_pretrained(a.checkpoint)
    cfg_scale = policy.default_guidance_scale if a.cfg is None else a.cfg
    _shapes_eval_policy(policy, Path(a.out), a.n, a.steps, cfg_scale, a.seed, a.split)
    return 0


def _shapes_render(a: argparse.Namespace) -> int:
    import numpy as np

    from flowdppo.shapes.prompts import parse_prompt, sample_scenes
    from flowdppo.shapes.render import render
    from flowdppo.viz import save_grid

    spec = parse_prompt(a.prompt)
    images = render(
        sample_scenes([spec] * a.n, np.random.default_rng(a.seed)), antialias=a.antialias
    )
    print(save_grid(images, [spec.text] * a.n, a.out, cols=min(a.n, 4)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from flowdppo.shapes.pretrain import PretrainConfig
    from flowdppo.shapes.prompts import NOISE_KINDS

    p = argparse.ArgumentParser(
        prog="flowdppo", description="Flow-DPPO: online RL for flow-matching generators"
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a policy (no config: Shapes + Flow-DPPO defaults)")
    t.add_argument("config", nargs="?", help="YAML config (see configs/ and docs/config.md)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. loss.delta=1e-6",
    )
    t.add_argument(
        "--max-iters",
        type=int,
        help="stop after this many iterations (default train.max_iters); the run's horizon, "
        "which the cosine lr decays over, stays train.max_iters, so a stopped run resumes "
        "exactly: to lengthen a run use --set train.max_iters=N",
    )
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    t.set_defaults(func=_train)
    r = sub.add_parser("resume", help="continue a run from its latest checkpoint")
    r.add_argument("run")
    r.add_argument("--max-iters", type=int)
    r.set_defaults(func=_resume)
    e = sub.add_parser("eval", help="evaluate a run's latest checkpoint (EMA if kept)")
    e.add_argument("--run", required=True)
    e.add_argument("--n", type=int, help="samples per category (default eval.per_category)")
    e.add_argument("--steps", type=int, help="ODE steps (default eval.num_inference_steps)")
    e.add_argument("--cfg", type=float, help="guidance scale (default: the run's evaluation CFG)")
    e.add_argument(
        "--split",
        choices=["test", "train"],
        default="test",
        help="Shapes runs: the test prompts, or the training split's (the generalisation gap); "
        "train writes eval/iter_N_train/",
    )
    e.set_defaults(func=_eval)
    s = sub.add_parser("sample", help="sample a run's policy into a PNG grid")
    s.add_argument("--run", required=True)
    s.add_argument("--prompt", action="append", required=True)
    s.add_argument("--n", type=int, default=4, help="samples per prompt")
    s.add_argument("--steps", type=int)
    s.add_argument("--cfg", type=float, help="guidance scale (default eval.guidance_scale)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_sample)
    pl = sub.add_parser("plot", help="reward / KL-to-base / reward-vs-KL curves of runs")
    pl.add_argument("--run", action="append", required=True)
    pl.add_argument("--out", default="curves.png")
    pl.set_defaults(func=_plot)
    x = sub.add_parser(
        "export", help="export a diffusers run's LoRA (or full transformer) for diffusers"
    )
    x.add_argument("--run", required=True)
    x.add_argument("--out", required=True)
    x.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the EMA weights (default: if kept)",
    )
    x.set_defaults(func=_export)
    d = sub.add_parser("demo", help="the Shapes demo: train with the defaults, then plot")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    d.set_defaults(func=_demo)
    sh = sub.add_parser("shapes", help="the embedded Shapes benchmark").add_subparsers(
        dest="shapes_command", required=True
    )
    sp = sh.add_parser("pretrain", help="pretrain the Shapes base model (resumable)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--steps", type=int, default=PretrainConfig.steps)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--lr", type=float, default=PretrainConfig.lr, help="peak learning rate")
    sp.add_argument(
        "--init", default=None, help="continue from a Shapes .safetensors (e.g. the shipped base)"
    )
    sp.add_argument(
        "--sigma-logit-mean",
        type=float,
        default=PretrainConfig.sigma_logit_mean,
        help="location of the logit-normal σ distribution (> 0: more high-noise training)",
    )
    sp.add_argument(
        "--category-weight",
        action="append",
        metavar="CATEGORY=W",
        help="relative weight of a prompt category in each batch (others weigh 1; repeatable)",
    )
    sp.add_argument(
        "--velocity-skip",
        action="store_true",
        help="model v = σ·x + network (ShapesModelConfig.velocity_skip); with --init, the init must have it too",
    )
    sp.add_argument(
        "--prior-batch",
        type=int,
        default=PretrainConfig.prior_batch,
        help="prompts per step of the σ = 1 prior term, whose target is a mean of renders (0 = off)",
    )
    sp.add_argument(
        "--prior-scenes",
        type=int,
        default=PretrainConfig.prior_scenes,
        help="renders averaged into each prior target",
    )
    sp.add_argument(
        "--prior-weight",
        type=float,
        default=PretrainConfig.prior_weight,
        help="weight of the prior term beside the flow-matching loss",
    )
    sp.add_argument(
        "--prior-category",
        action="append",
        metavar="CATEGORY",
        help="draw the prior term's prompts from this category only (repeatable; default: "
        "like the main batch)",
    )
    sp.add_argument(
        "--flow-weight",
        type=float,
        default=PretrainConfig.flow_weight,
        help="weight of the flow-matching loss (0: the prior term alone)",
    )
    sp.add_argument(
        "--caption-noise",
        type=float,
        default=PretrainConfig.caption_noise,
        help="fraction of two_object/color_attr/counting/position training images rendered from "
        "a scene their prompt gets wrong (noisy captions; 0 = clean)",
    )
    sp.add_argument(
        "--caption-noise-kind",
        choices=NOISE_KINDS,
        default=PretrainConfig.caption_noise_kind,
        help="what a noisy caption gets wrong: one compositional detail (a count off by one, the "
        "opposite relation, swapped colours, the first object twice) or an object it does not "
        "mention (the image holds one more)",
    )
    sp.set_defaults(func=_shapes_pretrain)
    se = sh.add_parser(
        "eval", help="GenEval-style table of a Shapes checkpoint (default: the shipped base)"
    )
    se.add_argument("--checkpoint", help="a Shapes .safetensors (default: the shipped base model)")
    se.add_argument("--steps", type=int, default=40)
    se.add_argument(
        "--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's)"
    )
    se.add_argument("--n", type=int, default=100, help="samples per category")
    se.add_argument(
        "--split", choices=["test", "train"], default="test", help="which prompts to evaluate on"
    )
    se.add_argument("--seed", type=int, default=1234)
    se.add_argument("--threads", type=int, default=0)
    se.add_argument("--out", default="shapes_eval")
    se.set_defaults(func=_shapes_eval)
    sr = sh.add_parser("render", help="render a prompt with the world's renderer")
    sr.add_argument("--prompt", required=True)
    sr.add_argument("--n", type=int, default=4)
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--antialias", action="store_true")
    sr.add_argument("--out", required=True)
    sr.set_defaults(func=_shapes_render)
    from flowdppo.compare.cli import register_cli as register_compare
    from flowdppo.rewards.server import register_cli

    register_cli(sub)
    register_compare(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
