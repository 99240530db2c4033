"""Prompt sources and the per-iteration prompt draw.

A source is a registered prefix (``flowdppo.trainer.sources``: ``shapes:train`` / ``shapes:test``,
the shipped Shapes split, optionally restricted to categories, ``shapes:train:counting,position``),
or a ``.txt`` (one prompt a line) / ``.jsonl`` (``{"prompt": ..., <metadata>...}``) file; a
``.jsonl`` row may give its prompt a ``negative_prompt`` (a string, kept in its metadata), which
``register_negative_prompts`` hands to the policy for CFG's negative branch. The P
prompts of iteration i are positions ``[i·P, (i+1)·P)`` of an endless sequence of seeded
permutations (one per epoch), so the data cursor is the iteration number itself and resuming
needs no other state. With ``data.balance_key`` (default ``category``) every category weighs the
same: Shapes' position prompts (560 of 740) would otherwise dominate the draw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from flowdppo.trainer.sources import prompt_source

NEGATIVE_KEY = "negative_prompt"  # a .jsonl row's negative prompt


def load_prompts(source: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(prompts, metadata) of a prompt source; clear errors for bad sources."""
    registered = prompt_source(source)
    if registered is not None:
        return registered.load(source)
    return load_file_prompts(source)


def load_file_prompts(source: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(prompts, metadata) of a ``.txt`` or ``.jsonl`` prompt file (module docstring)."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {source} does not exist")
    if not path.is_file():
        raise ValueError(f"prompt file {source} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"prompt file {source} is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from None
    if path.suffix == ".jsonl":
        prompts, meta = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not a JSON line ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(
                    f"{path}:{n}: expected a JSON object with a 'prompt' key (a string)"
                )
            if not row["prompt"].strip():
                raise ValueError(f"{path}:{n}: the prompt is empty")
            if not isinstance(row.get(NEGATIVE_KEY, ""), str):
                raise ValueError(
                    f"{path}:{n}: '{NEGATIVE_KEY}' must be a string, got {row[NEGATIVE_KEY]!r}"
                )
            prompts.append(row.pop("prompt"))
            meta.append(row)
        if not prompts:
            raise ValueError(f"prompt file {source} holds no prompts")
        return prompts, meta
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not prompts:
        raise ValueError(f"prompt file {source} holds no prompts")
    return prompts, [{} for _ in prompts]


def register_negative_prompts(
    policy: Any, prompts: list[str], metadata: list[dict[str, Any]], source: str
) -> None:
    """Give ``policy`` the ``negative_prompt`` of every prompt whose metadata has one
    (``set_negative_prompts``); an error naming ``source`` if the policy has no negative
    prompts (Shapes) and the source gives some."""
    negatives: dict[str, str] = {}
    for prompt, meta in zip(prompts, metadata, strict=True):
        if NEGATIVE_KEY not in meta:
            continue
        if negatives.setdefault(prompt, meta[NEGATIVE_KEY]) != meta[NEGATIVE_KEY]:
            raise ValueError(
                f"{source}: prompt {prompt!r} has two negative prompts, "
                f"{negatives[prompt]!r} and {meta[NEGATIVE_KEY]!r}"
            )
    if not negatives:
        return
    uses = getattr(policy, "uses_negative_prompts", None)
    if uses is None or not uses():
        raise ValueError(
            f"{source}: gives negative prompts ('{NEGATIVE_KEY}'), which this model does not use "
            "(no negative branch in its guidance; FLUX.1: set model.true_cfg_scale > 1)"
        )
    policy.set_negative_prompts(negatives)


def balance_by(metadata: list[dict[str, Any]], key: str) -> list[int]:
    """Indices that give every value of ``metadata[i][key]`` equal weight: each group's indices
    are repeated (cyclically) up to the size of the largest group. Rows without the key form
    one group."""
    groups: dict[Any, list[int]] = {}
    for i, m in enumerate(metadata):
        groups.setdefault(m.get(key), []).append(i)
    size = max(len(g) for g in groups.values())
    return [g[j % len(g)] for g in groups.values() for j in range(size)]


def prompt_indices(num_prompts: int, per_iter: int, iteration: int, seed: int) -> list[int]:
    """Indices of the ``per_iter`` prompts of ``iteration`` (epochs of seeded permutations)."""
    out: list[int] = []
    pos = iteration * per_iter
    while len(out) < per_iter:
        epoch, offset = divmod(pos, num_prompts)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(num_prompts, generator=g)
        take = min(per_iter - len(out), num_prompts - offset)
        out += perm[offset : offset + take].tolist()
        pos += take
    return out
