"""The Shapes benchmark as a prompt-source plug-in: ``shapes:train|test[:cat,cat]``.

Imported by ``flowdppo.trainer.sources`` on the first ``shapes:`` source, it registers the
shipped split as prompts (with each prompt's ``category``), the GenEval-style evaluation of
``flowdppo.shapes.evaluate`` as the source's evaluator (strict accuracy per category, TIFA, FD,
diversity; each sample marked pass/fail in the grid), and the report ``flowdppo eval`` and
``flowdppo shapes eval`` write (on the test or the training split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowdppo.shapes.prompts import CATEGORIES, load_split
from flowdppo.trainer.sources import EvalSamples, register_prompt_source

SPLITS = ("test", "train")


def parse_source(source: str) -> tuple[str, tuple[str, ...]]:
    """``shapes:SPLIT[:cat,cat]`` → (split, categories); a ValueError naming a bad source."""
    parts = source.split(":")
    if len(parts) not in (2, 3) or parts[1] not in ("train", "test"):
        raise ValueError(f"prompt source {source!r}: expected shapes:train|test[:cat,cat]")
    cats = tuple(parts[2].split(",")) if len(parts) == 3 else CATEGORIES
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise ValueError(
            f"prompt source {source!r}: unknown categories {bad}; expected {list(CATEGORIES)}"
        )
    return parts[1], cats


def load(source: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The split's prompts of the source's categories, each with its ``category``."""
    split, cats = parse_source(source)
    specs = [s for s in load_split(split) if s.category in cats]
    return [s.text for s in specs], [{"category": s.category} for s in specs]


def evaluate(
    policy: Any, source: str, n: int, steps: int, guidance_scale: float, seed: int
) -> EvalSamples:
    """``n`` ODE samples per category of the source's split, scored (``score_eval``)."""
    from flowdppo.shapes.evaluate import eval_specs, score_eval
    from flowdppo.trainer.sampling import generate

    split, cats = parse_source(source)
    specs = eval_specs(n, split, cats)
    prompts = [s.text for s in specs]
    images = generate(policy, prompts, steps=steps, guidance_scale=guidance_scale, seed=seed)
    res = score_eval(images, specs)
    meta = [{"category": sp.category} for sp in specs]
    return EvalSamples(prompts, meta, images, res.metrics, [bool(p) for p in res.passed])


def report(
    policy: Any,
    out: Path,
    n: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    split: str = "test",
) -> None:
    """The GenEval-style table of every category's ``split`` prompts: ``out/eval.json``,
    ``eval.md`` and a 48-image ``grid.png`` with pass/fail marks."""
    from flowdppo.shapes.evaluate import eval_specs, markdown_table, score_eval
    from flowdppo.trainer.evaluation import write_eval
    from flowdppo.trainer.sampling import generate
    from flowdppo.viz import save_grid

    specs = eval_specs(n, split=split)
    prompts = [s.text for s in specs]
    images = generate(
        policy, prompts, steps=steps, guidance_scale=guidance_scale, seed=seed, progress=True
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
        f"CFG {guidance_scale}"
    )
    write_eval({**res.metrics, "table": res.table}, markdown_table(res, title), out)


register_prompt_source("shapes", load, evaluate, report=report, splits=SPLITS)
