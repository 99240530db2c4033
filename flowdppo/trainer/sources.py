"""Prompt sources by prefix: ``<prefix>:<rest>`` names a registered source, anything else a file.

A plug-in (the Shapes benchmark: ``shapes:train``, ``shapes:test:counting``) registers its prefix
with ``register_prompt_source``: a loader (the prompts and their metadata, for training and for
the evaluation of other sources' runs), optionally an evaluator (the samples and metrics of a
periodic evaluation: Shapes scores its own GenEval-style table) and a report (what ``flowdppo
eval`` of a run with that evaluation source writes, with the splits it takes). The built-in
plug-ins in ``BUILTIN_SOURCES`` are imported on the first use of their prefix only, so that the
trainer loads no benchmark it is not asked for. A source with no registered prefix is a
``.txt`` / ``.jsonl`` file (``flowdppo.trainer.data.load_file_prompts``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Prompts = tuple[list[str], list[dict[str, Any]]]


@dataclass(frozen=True)
class EvalSamples:
    """One evaluation's samples: images [N, 3, H, W] in [0, 1] of ``prompts`` (with their
    ``metadata``), the source's own ``eval/...`` metrics, and per sample a pass mark for the grid
    (None: no mark)."""

    prompts: list[str]
    metadata: list[dict[str, Any]]
    images: torch.Tensor
    metrics: dict[str, float]
    marks: list[bool | None]


# evaluate(policy, source, n, steps, guidance_scale, seed) -> EvalSamples
Evaluator = Callable[[Any, str, int, int, float, int], EvalSamples]
# report(policy, out, n, steps, guidance_scale, seed, split): writes out/eval.json, eval.md, grid.png
Report = Callable[[Any, Path, int, int, float, int, str], None]


@dataclass(frozen=True)
class PromptSource:
    """What a prefix registers (module docstring)."""

    prefix: str
    load: Callable[[str], Prompts]
    evaluate: Evaluator | None = None
    report: Report | None = None
    splits: tuple[str, ...] = ("test",)


# Prefixes whose plug-in registers itself when imported: imported on their first use.
BUILTIN_SOURCES: dict[str, str] = {"shapes": "flowdppo.shapes.plugin"}
_SOURCES: dict[str, PromptSource] = {}


def register_prompt_source(
    prefix: str,
    load: Callable[[str], Prompts],
    evaluate: Evaluator | None = None,
    *,
    report: Report | None = None,
    splits: tuple[str, ...] = ("test",),
) -> PromptSource:
    """Register the sources ``<prefix>:...``; ``load(source)`` gets the whole source string."""
    if not prefix or ":" in prefix:
        raise ValueError(f"a prompt source prefix is a non-empty name without ':', got {prefix!r}")
    if prefix in _SOURCES:
        raise ValueError(f"prompt source prefix {prefix!r} is already registered")
    _SOURCES[prefix] = PromptSource(prefix, load, evaluate, report, tuple(splits))
    return _SOURCES[prefix]


def prompt_source(source: str) -> PromptSource | None:
    """The registered source of ``source``'s prefix (importing a built-in plug-in on first use),
    or None: ``source`` is a file."""
    prefix, sep, _ = source.partition(":")
    if not sep:
        return None
    if prefix not in _SOURCES and prefix in BUILTIN_SOURCES:
        importlib.import_module(BUILTIN_SOURCES[prefix])
    return _SOURCES.get(prefix)
