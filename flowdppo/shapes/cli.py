"""``flowdppo shapes pretrain|eval|render``: the Shapes benchmark's commands.

flowdppo shapes pretrain --out DIR [--steps N] [--init FILE] [--caption-noise Q] ...
flowdppo shapes eval [--checkpoint FILE] [--n N] [--steps S] [--cfg G] [--split test|train]
flowdppo shapes render --prompt P [--n 4] [--antialias] --out grid.png

Registered into the ``flowdppo`` command line by ``register_cli`` (as the reward server's and
``compare``'s). The ``pretrain`` options are ``PretrainConfig``'s flagged fields
(``flowdppo.shapes.recipe``), plus ``--out`` and the model's ``--velocity-skip``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flowdppo.cli_errors import UserError
from flowdppo.config.flags import add_flags, from_flags, positive_int


def _pretrain(a: argparse.Namespace) -> int:
    from flowdppo.shapes import pretrain as pt
    from flowdppo.shapes.model import ShapesModelConfig

    cfg = from_flags(pt.PretrainConfig, a)
    print(pt.pretrain(a.out, cfg, ShapesModelConfig(velocity_skip=a.velocity_skip)))
    return 0


def _eval(a: argparse.Namespace) -> int:
    import torch

    from flowdppo.models.shapes import ShapesPolicy
    from flowdppo.shapes.plugin import report

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.checkpoint is not None and not Path(a.checkpoint).is_file():
        raise UserError(f"--checkpoint {a.checkpoint} is not a file")
    policy = ShapesPolicy.from_pretrained(a.checkpoint)  # a ValueError naming a bad file
    cfg_scale = policy.default_guidance_scale if a.cfg is None else a.cfg
    report(policy, Path(a.out), a.n, a.steps, cfg_scale, a.seed, a.split)
    return 0


def _render(a: argparse.Namespace) -> int:
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


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``shapes`` command and its subcommands to the ``flowdppo`` CLI; sets ``func``."""
    from flowdppo.shapes.recipe import PretrainConfig

    p = subparsers.add_parser("shapes", help="the embedded Shapes benchmark")
    sh = p.add_subparsers(dest="shapes_command", required=True)
    sp = sh.add_parser("pretrain", help="pretrain the Shapes base model (resumable)")
    sp.add_argument("--out", required=True)
    add_flags(sp, PretrainConfig)
    sp.add_argument(
        "--velocity-skip",
        action="store_true",
        help="model v = σ·x + network (ShapesModelConfig.velocity_skip); with --init, the init "
        "must have it too",
    )
    sp.set_defaults(func=_pretrain)
    se = sh.add_parser(
        "eval", help="GenEval-style table of a Shapes checkpoint (default: the shipped base)"
    )
    se.add_argument("--checkpoint", help="a Shapes .safetensors (default: the shipped base model)")
    se.add_argument("--steps", type=positive_int, default=40)
    se.add_argument(
        "--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's)"
    )
    se.add_argument("--n", type=positive_int, default=100, help="samples per category")
    se.add_argument(
        "--split", choices=["test", "train"], default="test", help="which prompts to evaluate on"
    )
    se.add_argument("--seed", type=int, default=1234)
    se.add_argument("--threads", type=int, default=0)
    se.add_argument("--out", default="shapes_eval")
    se.set_defaults(func=_eval)
    sr = sh.add_parser("render", help="render a prompt with the world's renderer")
    sr.add_argument("--prompt", required=True)
    sr.add_argument("--n", type=positive_int, default=4)
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--antialias", action="store_true")
    sr.add_argument("--out", required=True)
    sr.set_defaults(func=_render)
    return p
