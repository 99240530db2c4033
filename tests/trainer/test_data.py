"""Prompt sources, the balanced draw and the per-iteration prompt indices (trainer/data.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from flowdppo.trainer.data import (
    balance_by,
    load_prompts,
    prompt_indices,
    register_negative_prompts,
)


def test_shapes_sources_and_category_filter():
    prompts, meta = load_prompts("shapes:train:counting,position")
    assert set(m["category"] for m in meta) == {"counting", "position"}
    assert len(prompts) == 30 + 560  # the shipped split's counting and position training prompts
    test_prompts, _ = load_prompts("shapes:test")
    assert not set(test_prompts) & set(load_prompts("shapes:train")[0])


@pytest.mark.parametrize("bad", ["shapes:valid", "shapes:train:colour", "shapes:train:x:y"])
def test_bad_shapes_source(bad):
    with pytest.raises(ValueError, match="prompt source"):
        load_prompts(bad)


def test_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n a dog \n")
    assert load_prompts(str(txt)) == (["a cat", "a dog"], [{}, {}])
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        json.dumps({"prompt": "a cat", "tag": "x"}) + "\n" + json.dumps({"tag": "y"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected a JSON object with a 'prompt' key"):
        load_prompts(str(jl))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.txt"))


def test_jsonl_negative_prompts_reach_the_policy(tmp_path):
    jl = tmp_path / "p.jsonl"
    rows = [{"prompt": "a cat", "negative_prompt": "blurry"}, {"prompt": "a dog"}]
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts, meta = load_prompts(str(jl))
    assert meta == [{"negative_prompt": "blurry"}, {}]

    class Policy:
        def __init__(self, uses=True):
            self.given, self.uses = {}, uses

        def uses_negative_prompts(self):
            return self.uses

        def set_negative_prompts(self, negatives):
            self.given.update(negatives)

    policy = Policy()
    register_negative_prompts(policy, prompts, meta, str(jl))
    assert policy.given == {"a cat": "blurry"}  # "a dog" keeps the model's negative prompt
    for unused in (object(), Policy(uses=False)):  # Shapes; FLUX.1 without true CFG
        with pytest.raises(ValueError, match=r"p.jsonl: gives negative prompts .* does not use"):
            register_negative_prompts(unused, prompts, meta, str(jl))
    register_negative_prompts(object(), ["a dog"], [{}], "shapes:test")  # none given: fine
    twice = [{"negative_prompt": "blurry"}, {"negative_prompt": "dark"}]
    with pytest.raises(ValueError, match=r"p.jsonl: prompt 'a cat' has two negative prompts"):
        register_negative_prompts(policy, ["a cat", "a cat"], twice, str(jl))
    jl.write_text(json.dumps({"prompt": "a cat", "negative_prompt": 3}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: 'negative_prompt' must be a string, got 3"):
        load_prompts(str(jl))


def test_balance_by_gives_each_value_equal_weight():
    meta = [{"c": "a"}] * 6 + [{"c": "b"}] * 2 + [{}]
    idx = balance_by(meta, "c")
    counts = Counter(meta[i].get("c") for i in idx)
    assert counts == {"a": 6, "b": 6, None: 6}
    # Every index of a small group appears equally often (cyclic repetition).
    assert Counter(i for i in idx if meta[i].get("c") == "b") == {6: 3, 7: 3}


def test_prompt_indices_are_epochs_of_permutations():
    n, p = 10, 4
    draws = [prompt_indices(n, p, it, seed=3) for it in range(5)]  # 20 draws = 2 epochs
    flat = [i for d in draws for i in d]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a new permutation each epoch
    assert prompt_indices(n, p, 2, seed=3) == draws[2]  # a pure function of the iteration
    assert prompt_indices(n, p, 2, seed=4) != draws[2]
