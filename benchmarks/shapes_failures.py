"""Why do a policy's images fail strict? Each test image's first failure, per category.

Classes, checked in this order on the parsed image (ODE 40 steps, the run's evaluation CFG):

- ``ok``: strict passes;
- ``unclean``: an unrecognised blob or stray pixels (the cleanliness gate);
- ``count N (want M)``: the wrong number of objects;
- ``wrong relation``: position prompts with exactly the two described objects, in the wrong
  relation;
- ``same object twice``: two objects wanted, two drawn, one description drawn twice (two_object:
  one shape in both; colors: one colour in both);
- ``wrong colour or shape``: the right number of objects, but not the described ones.

    .venv/bin/python benchmarks/shapes_failures.py [--run DIR | --checkpoint PATH] [--n 100]

DIR: a run directory (its latest checkpoint); PATH: a Shapes .safetensors (default: the shipped
base) or a pretraining ``pretrain_state.pt`` (its EMA), as in ``shapes_base_skills.py``.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from shapes_base_skills import load_policy

from flowdppo.shapes.evaluate import eval_specs
from flowdppo.shapes.parser import ParsedImage, parse_images
from flowdppo.shapes.prompts import CATEGORIES, PromptSpec
from flowdppo.shapes.render import to_uint8
from flowdppo.shapes.score import check_atoms
from flowdppo.trainer.sampling import generate


def classify(spec: PromptSpec, parsed: ParsedImage) -> str:
    """The first failure of one image, or ``ok`` (see the module docstring)."""
    atoms = check_atoms(spec, parsed)
    if parsed.clean and all(atoms):
        return "ok"
    if not parsed.clean:
        return "unclean"
    want, got = sum(g.count for g in spec.groups), len(parsed.objects)
    if got != want:
        return f"count {got} (want {want})"
    if spec.relation is not None and atoms[-1]:  # exactly the described objects: the relation
        return "wrong relation"
    drawn = {(o.color, o.shape) for o in parsed.objects}
    if want == 2 and len(spec.groups) == 2 and len(drawn) == 1:
        return "same object twice"
    return "wrong colour or shape"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--run", help="a run directory (its latest checkpoint)")
    src.add_argument("--checkpoint", help="a Shapes .safetensors or pretrain_state.pt")
    ap.add_argument("--n", type=int, default=100, help="test prompts per category")
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.run:
        from flowdppo.runs import load_run_policy

        policy, cfg, it = load_run_policy(a.run)
        cfg_scale, seed, label = cfg.eval_guidance_scale, cfg.eval.seed, f"{a.run} @ {it}"
    else:
        policy = load_policy(a.checkpoint)
        cfg_scale, seed, label = policy.default_guidance_scale, 0, a.checkpoint or "shipped base"
    print(f"{label}: {a.n} test prompts per category, ODE 40, CFG {cfg_scale}")
    for cat in a.categories:
        specs = eval_specs(a.n, categories=(cat,))
        images = generate(
            policy, [s.text for s in specs], steps=40, guidance_scale=cfg_scale, seed=seed
        )
        counts = Counter(
            classify(s, p) for s, p in zip(specs, parse_images(to_uint8(images)), strict=True)
        )
        print(f"| {cat} | " + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + " |")


if __name__ == "__main__":
    main()
