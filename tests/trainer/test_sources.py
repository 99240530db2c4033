"""Tests for flowdppo/trainer/sources.py: prompt sources by prefix, the Shapes plug-in loaded on
its first use, a plug-in's loader and evaluator used by the trainer's data and evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from flowdppo.config import load_config
from flowdppo.trainer import evaluation, sources
from flowdppo.trainer.data import load_prompts
from flowdppo.trainer.sources import EvalSamples, prompt_source, register_prompt_source


@pytest.fixture
def registry(monkeypatch):
    """A registry holding only what the test registers, the real one restored after."""
    import flowdppo.shapes.plugin  # noqa: F401  (registered in the real registry first)

    monkeypatch.setattr(sources, "_SOURCES", {})
    monkeypatch.setattr(sources, "BUILTIN_SOURCES", {})
    return sources._SOURCES


def test_the_trainer_imports_no_benchmark_until_a_shapes_source_is_used():
    code = (
        "import json, sys\n"
        "import flowdppo.trainer.evaluation, flowdppo.trainer.data\n"
        "before = [m for m in sys.modules if m.startswith('flowdppo.shapes')]\n"
        "flowdppo.trainer.data.load_prompts('shapes:test:counting')\n"
        "print(json.dumps([before, 'flowdppo.shapes.plugin' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[], True]
    shapes = prompt_source("shapes:test")
    assert shapes is not None and shapes.splits == ("test", "train")
    assert shapes.evaluate is not None and shapes.report is not None


def test_a_registered_prefix_loads_and_anything_else_is_a_file(registry, tmp_path):
    seen = []
    register_prompt_source("toy", lambda s: seen.append(s) or (["a", "b"], [{}, {"k": 1}]))
    assert load_prompts("toy:anything") == (["a", "b"], [{}, {"k": 1}])
    assert seen == ["toy:anything"]  # the loader gets the whole source
    assert prompt_source("toy:x").splits == ("test",)  # type: ignore[union-attr]
    assert prompt_source("other:x") is None and prompt_source(str(tmp_path)) is None
    odd = tmp_path / "a:b.txt"  # a file whose name has an unregistered "prefix"
    odd.write_text("one\n")
    assert load_prompts(str(odd)) == (["one"], [{}])
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_prompt_source("toy", lambda s: ([], []))
    with pytest.raises(ValueError, match="without ':'"):
        register_prompt_source("a:b", lambda s: ([], []))


def test_evaluate_uses_the_sources_evaluator(registry, monkeypatch):
    calls = []

    def toy_eval(policy, source, n, steps, guidance_scale, seed):
        calls.append((source, n, steps, guidance_scale, seed))
        images = torch.zeros(n, 3, 4, 4)
        return EvalSamples(["p"] * n, [{}] * n, images, {"eval/toy": 0.5}, [True] * n)

    register_prompt_source("toy", lambda s: (["p"], [{}]), toy_eval)
    monkeypatch.setattr(evaluation, "_reward_metrics", lambda *a: {"eval/reward_mean": 1.0})
    cfg = load_config(None, ["data.eval_prompts=toy:x", "eval.kl_samples=0"])
    metrics = evaluation.evaluate(None, cfg, [], None, 3, 5, 2.0)
    assert metrics == {"eval/toy": 0.5, "eval/reward_mean": 1.0}
    assert calls == [("toy:x", 3, 5, 2.0, cfg.eval.seed)]
