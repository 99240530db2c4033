"""The ``flowdppo`` command line. Every command is a thin call into the library.

flowdppo train [CONFIG] [--set k=v ...] [--max-iters N] --out DIR [--resume] [--no-progress]
flowdppo resume DIR [--max-iters N] [--set k=v ...] [--allow-config-change] [--no-progress]
flowdppo eval --run DIR [--n N] [--steps S] [--cfg G] [--split test|train]
flowdppo sample --run DIR --prompt P [--prompt P ...] [--n 4] [--negative-prompt N] --out grid.png
flowdppo plot --run DIR [--run DIR ...] --out plot.png
flowdppo export --run DIR --out DIR
flowdppo demo [--out DIR] [--no-progress]
flowdppo shapes pretrain|eval|render ...
flowdppo reward-server --reward NAME --port P

Exit codes (docs/reliability.md): 0 done; 1 the run failed at run time (a reward error,
non-finite training, another process that stopped or hung, an unexpected exception); 2 a user
error (arguments, config, input files, a run directory that cannot be used), one line without a
traceback (``--debug`` shows it);
128 + N stopped by signal N after saving a checkpoint (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from flowdppo.cli_errors import UserError, run_command
from flowdppo.config.flags import positive_int


def _train(a: argparse.Namespace) -> int:
    from flowdppo.runs import prepare_run
    from flowdppo.trainer.trainer import StopRequested, Trainer

    out = Path(a.out)
    cfg, resume = prepare_run(out, a.config, a.set, a.resume, a.allow_config_change)
    trainer = Trainer(cfg, out, resume=resume)
    if cfg.model.compile:
        print(
            "model.compile: the first iteration and the first evaluation also compile the "
            "network (about a minute on a CPU); the ones after run faster",
            file=sys.stderr,
        )
    try:
        trainer.train(a.max_iters, progress=not a.no_progress)
    except StopRequested as stop:
        print(f"stopped; resume with: flowdppo resume {out}", file=sys.stderr)
        return 128 + stop.signum
    print(
        f"run saved in {out} (metrics.jsonl, samples/, checkpoints/); plot with: flowdppo plot --run {out}"
    )
    return 0


def _resume(a: argparse.Namespace) -> int:
    a.out, a.config, a.resume = a.run, None, True
    return _train(a)


def _eval(a: argparse.Namespace) -> int:
    from flowdppo.runs import eval_dir_name, load_run_policy, run_config
    from flowdppo.trainer.build import build_run_rewards
    from flowdppo.trainer.evaluation import evaluate, write_eval
    from flowdppo.trainer.sources import prompt_source

    if a.cfg is not None and not a.cfg >= 1.0:
        raise UserError(f"flowdppo eval: --cfg must be >= 1.0 (1 = no guidance), got {a.cfg}")
    prompts = run_config(a.run).data.eval_prompts
    source = prompt_source(prompts)
    report = source.report if source is not None else None
    splits = source.splits if source is not None and report is not None else ("test",)
    if a.split not in splits:  # checked before the model is loaded
        raise UserError(
            f"flowdppo eval: --split {a.split} is for Shapes runs; {Path(a.run) / 'config.yaml'} "
            f"evaluates data.eval_prompts={prompts!r}"
        )
    policy, cfg, it = load_run_policy(a.run, require_checkpoint=True)
    n, steps = a.n or cfg.eval.per_category, a.steps or cfg.eval.num_inference_steps
    g = cfg.eval_guidance_scale if a.cfg is None else a.cfg
    out = Path(a.run) / "eval" / eval_dir_name(it, a.split, n, steps, g, cfg)
    if report is not None:
        report(policy, out, n, steps, g, cfg.eval.seed, a.split)
        return 0
    m = evaluate(policy, cfg, build_run_rewards(cfg), out / "grid.png", n, steps, g)
    write_eval(m, "\n".join(f"- {k}: {v:.4f}" for k, v in m.items()) + "\n", out)
    return 0


def _sample(a: argparse.Namespace) -> int:
    from flowdppo.runs import sample_run

    print(sample_run(a.run, a.prompt, a.n, a.steps, a.cfg, a.seed, a.out, a.negative_prompt))
    return 0


def _plot(a: argparse.Namespace) -> int:
    from flowdppo.plots import plot_runs
    from flowdppo.trainer.logging import read_metrics

    if a.diagnostic == "ratio":
        from flowdppo.diagnostics import ratio_report

        out = a.out if a.out != "curves.png" else "ratio_kl.png"
        print(ratio_report(a.run, out, a.delta, a.clip_range))
        return 0

    for run in a.run:
        if not read_metrics(Path(run), "train"):
            raise UserError(
                f"{Path(run) / 'metrics.jsonl'} holds no training lines yet: nothing to plot"
            )
    print(plot_runs(a.run, a.out))
    return 0


def _export(a: argparse.Namespace) -> int:
    from flowdppo.runs import load_run_policy, run_config

    cfg = run_config(a.run)
    if cfg.model.family == "shapes":
        raise UserError(
            "export writes diffusers formats; a Shapes run's weights are in its checkpoints/"
        )
    if not cfg.model.full_finetune:  # the LoRA file from the checkpoint alone: no pipeline
        from flowdppo.runs import export_run_lora

        print(export_run_lora(a.run, a.out, use_ema=a.ema))
        return 0
    policy, cfg, _ = load_run_policy(a.run, use_ema=a.ema, require_checkpoint=True)
    from flowdppo.models.export import export_full

    print(export_full(policy, a.out))  # full fine-tuning: the transformer folder
    return 0


def _demo(a: argparse.Namespace) -> int:
    from flowdppo.plots import plot_runs
    from flowdppo.runs import has_checkpoint, prepare_run
    from flowdppo.trainer.trainer import StopRequested, Trainer

    out = Path(a.out)  # resumed if it holds a checkpoint (a config change is then refused)
    cfg, resume = prepare_run(out, None, a.set, has_checkpoint(out), False)
    trainer = Trainer(cfg, out, resume=resume)
    try:
        trainer.train(progress=not a.no_progress)
    except StopRequested as stop:  # as `train`: a clean stop, not a traceback
        print(f"stopped; run `flowdppo demo --out {out}` again to resume", file=sys.stderr)
        return 128 + stop.signum
    from flowdppo.runs import accuracy_lines

    print("\n".join(accuracy_lines(out)))
    print(
        f"demo done: {out}/metrics.jsonl, samples: {out}/samples/, curves: {plot_runs([out], out / 'curves.png')}"
    )
    return 0


def _add_set(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def _add_training_commands(sub: Any) -> None:
    """``train`` and ``resume``."""
    t = sub.add_parser("train", help="train a policy (no config: Shapes + Flow-DPPO defaults)")
    t.add_argument("config", nargs="?", help="YAML config (see configs/ and docs/config.md)")
    _add_set(t, "override a config key, e.g. loss.delta=1e-6")
    t.add_argument(
        "--max-iters",
        type=positive_int,
        help="stop after this many iterations (default train.max_iters); the run's horizon, "
        "which the cosine lr decays over, stays train.max_iters, so a stopped run resumes "
        "exactly: to lengthen a run use --set train.max_iters=N",
    )
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (none: start it over)",
    )
    allow = (
        "resume even though CONFIG or --set changes the run's saved config (the change is "
        "recorded in RUN/config_changes.jsonl; the run is then no longer one exact run)"
    )
    t.add_argument("--allow-config-change", action="store_true", help=allow)
    _add_no_progress(t)
    t.set_defaults(func=_train)
    r = sub.add_parser(
        "resume",
        help="continue a run from its latest checkpoint (a run stopped before its first "
        "checkpoint starts over)",
    )
    r.add_argument("run")
    r.add_argument("--max-iters", type=positive_int, help="stop after this many iterations")
    _add_set(
        r,
        "change a key of the saved config (refused unless --allow-config-change, but for "
        "train.save_every, train.sample_every, train.max_minutes)",
    )
    r.add_argument("--allow-config-change", action="store_true", help=allow)
    _add_no_progress(r)
    r.set_defaults(func=_resume)


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (the evaluations' bar is also off when stderr is not a terminal)",
    )


def _add_run_commands(sub: Any) -> None:
    """``eval``, ``sample``, ``plot`` and ``export`` of a run directory."""
    e = sub.add_parser("eval", help="evaluate a run's latest checkpoint (EMA if kept)")
    e.add_argument("--run", required=True)
    e.add_argument(
        "--n", type=positive_int, help="samples per category (default eval.per_category)"
    )
    e.add_argument(
        "--steps", type=positive_int, help="ODE steps (default eval.num_inference_steps)"
    )
    e.add_argument("--cfg", type=float, help="guidance scale (default: the run's evaluation CFG)")
    e.add_argument(
        "--split",
        choices=["test", "train"],
        default="test",
        help="Shapes runs: the test prompts, or the training split's (the generalisation gap); "
        "train writes eval/iter_N_train/",
    )
    e.set_defaults(func=_eval)
    s = sub.add_parser("sample", help="sample a run's policy into a PNG grid (videos: a GIF)")
    s.add_argument("--run", required=True)
    s.add_argument("--prompt", action="append", required=True)
    s.add_argument("--n", type=positive_int, default=4, help="samples per prompt")
    s.add_argument("--steps", type=positive_int)
    s.add_argument("--cfg", type=float, help="guidance scale (default eval.guidance_scale)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--negative-prompt",
        help="negative prompt of CFG for every --prompt (families with a negative branch: "
        "docs/models.md); default: the run's model.negative_prompt",
    )
    s.add_argument("--out", required=True)
    s.set_defaults(func=_sample)
    pl = sub.add_parser("plot", help="reward / KL-to-base / reward-vs-KL curves of runs")
    pl.add_argument("--run", action="append", required=True)
    pl.add_argument("--out", default="curves.png")
    pl.add_argument(
        "--diagnostic",
        choices=("ratio",),
        help="ratio: |ρ − 1| against the exact per-step KL of the runs' sampled terms "
        "(train.diagnostic_terms), with how often the clip and the mask disagree",
    )
    pl.add_argument("--delta", type=float, help="mask δ for --diagnostic (default: the run's)")
    pl.add_argument(
        "--clip-range", type=float, help="clip ε for --diagnostic (default: the run's, else 1e-4)"
    )
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


def build_parser() -> argparse.ArgumentParser:
    """The ``flowdppo`` parser: this module's commands, then the registered ones (``shapes``,
    ``reward-server``, ``compare``)."""
    from flowdppo.compare.cli import register_cli as register_compare
    from flowdppo.rewards.server import register_cli as register_server
    from flowdppo.shapes.cli import register_cli as register_shapes

    p = argparse.ArgumentParser(
        prog="flowdppo",
        description="Flow-DPPO: online RL for flow-matching generators",
        epilog="exit codes: 0 done; 1 the run failed; 2 a user error (one line; --debug: the "
        "traceback); 128+N stopped by signal N after saving (130 Ctrl-C, 143 SIGTERM)",
    )
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (anywhere on the line)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    _add_run_commands(sub)
    d = sub.add_parser("demo", help="the Shapes demo: train with the defaults, then plot")
    d.add_argument("--out", default="runs/demo")
    _add_no_progress(d)
    _add_set(d)
    d.set_defaults(func=_demo)
    register_shapes(sub)
    register_server(sub)
    register_compare(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FLOWDPPO_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([x for x in argv if x != "--debug"])
    return run_command(args.func, args, debug)


if __name__ == "__main__":
    sys.exit(main())
