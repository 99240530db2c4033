"""Every key the trainer logs (train and eval lines, every loss variant) is in docs/metrics.md.

A logged key is documented when it appears in backticks in the doc, or matches a documented
pattern with a placeholder (``reward/<name>``, ``eval/strict_<category>``).
"""

from __future__ import annotations

import re
from pathlib import Path

from flowdppo.trainer.trainer import Trainer

from .tiny import read_lines, tiny_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
VARIANTS = [
    ["loss.name=flow_dppo", "loss.delta_schedule=adaptive", "loss.target_step_kl=1e-7"],
    ["loss.name=flow_dppo", "loss.divergence=tv", "loss.beta=1e-3"],
    ["loss.name=ratio_clip"],
    [
        "loss.name=grpo_guard",
        "rewards=[{name: jpeg_incompressibility}, {name: test_red, weight: 0.5}]",
    ],
]


def documented_patterns() -> list[re.Pattern[str]]:
    names = set(re.findall(r"`([a-z_]+(?:/[a-z0-9_<>]+)?)`", DOC.read_text()))
    return [
        re.compile(
            re.escape(n)
            .replace(re.escape("<name>"), "[a-z0-9_]+")
            .replace(re.escape("<category>"), "[a-z_]+")
            + r"\Z"
        )
        for n in names
    ]


def _logged_keys(tiny_ckpt, tmp_path) -> set[str]:
    keys: set[str] = set()
    for i, extra in enumerate(VARIANTS):
        run = tmp_path / f"run{i}"
        trainer = Trainer(tiny_config(tiny_ckpt, *extra), run)
        trainer.step()
        trainer.step()
        if i == 0:
            trainer.evaluate(grid=False)  # the Shapes table (data.eval_prompts: shapes:test)
        keys |= {k for row in read_lines(run, None) for k in row}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    run = tmp_path / "file_eval"
    Trainer(tiny_config(tiny_ckpt, f"data.eval_prompts={prompts}"), run).evaluate(grid=False)
    return keys | {k for row in read_lines(run, None) for k in row}


def test_every_logged_key_is_documented(tiny_ckpt, tmp_path) -> None:
    keys = _logged_keys(tiny_ckpt, tmp_path)
    patterns = documented_patterns()
    missing = sorted(k for k in keys if not any(p.match(k) for p in patterns))
    assert not missing, f"logged but not in docs/metrics.md: {missing}"
    # and the run did log the variants' own keys, so the check covered them
    expected = {
        "mask/frac",
        "tv/old_new_max",
        "kl/ref_update_mean",
        "clip/frac",
        "guard/bias_mean",
        "eval/strict_counting",
        "eval/fd",
        "eval/reward_mean",
        "eval/jpeg_incompressibility",
        "reward/test_red",
    }
    assert expected <= keys, sorted(expected - keys)


def test_placeholders_do_not_document_everything() -> None:
    patterns = documented_patterns()
    assert any(p.match("eval/strict_position") for p in patterns)
    assert not any(p.match("reward/mean/extra") or p.match("ratio/median") for p in patterns)
