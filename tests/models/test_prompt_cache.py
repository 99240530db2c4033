"""The prompt-embedding cache of the diffusers adapters: least recently used out first within a
byte budget, optionally held on the CPU, counted for the trainer's ``cache/*`` metrics, and
transparent (a cached encoding gives the uncached velocities bit for bit)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPTS, Family
from tiny_pipelines import CLIP_MAX_LENGTH, MAX_SEQUENCE_LENGTH, RESOLUTION

from flowdppo.config.load import load_config
from flowdppo.config.schema import ConfigError, ModelConfig
from flowdppo.models._diffusers_common import (
    MIB,
    PromptCache,
    cond_nbytes,
    prompt_cache_metrics,
)

ROW = 256  # float32 values per prompt in the unit tests: 1 KiB a row
WORDS = ["a", "the", "red", "green", "blue", "small", "big", "circle", "square", "cat", "dog"]


class Encoder:
    """``encode`` for ``PromptCache.get``: one [n, ROW] row per prompt (its call number), recorded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        self.calls.append(list(prompts))
        first = sum(len(c) for c in self.calls[:-1])
        ids = torch.arange(first, first + len(prompts), dtype=torch.float32)
        return {"e": ids[:, None].expand(-1, ROW).clone()}  # [n, ROW]


def distinct_prompts(n: int) -> list[str]:
    """``n`` distinct prompts of the tiny tokenizers' words (three words each)."""
    out = [f"{a} {b} {c}" for a in WORDS for b in WORDS for c in WORDS if len({a, b, c}) == 3]
    return out[:n]


def test_least_recently_used_prompt_is_evicted_first() -> None:
    cache, encode = PromptCache(3 * ROW * 4, torch.device("cpu")), Encoder()
    cache.get(["a", "b", "c"], encode)
    cache.get(["a"], encode)  # a is now the most recent: b is the oldest
    cache.get(["d"], encode)
    assert list(cache._rows) == ["c", "a", "d"]
    assert encode.calls == [["a", "b", "c"], ["d"]]
    cache.get(["c", "b"], encode)  # c a hit, b encoded again; a (oldest) goes
    assert encode.calls[-1] == ["b"] and list(cache._rows) == ["d", "c", "b"]
    assert cache.stats() == {
        "hits": 2,
        "misses": 5,
        "evictions": 2,
        "entries": 3,
        "bytes": 3 * ROW * 4,
        "max_bytes": 3 * ROW * 4,
    }


def test_a_call_larger_than_the_budget_gets_every_row_and_rows_own_their_storage() -> None:
    cache, encode = PromptCache(2 * ROW * 4, torch.device("cpu")), Encoder()
    out = cache.get(["p0", "p1", "p2", "p1", "p3"], encode)["e"]  # [5, ROW]
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 1, 2, 1, 3]), rtol=0, atol=0)
    assert encode.calls == [["p0", "p1", "p2", "p3"]]  # duplicates encoded once
    assert list(cache._rows) == ["p2", "p3"] and cache.stats()["evictions"] == 2
    # A held row is a copy of its own (evicting it frees its bytes), not a view of the batch.
    held = cache._rows["p3"]["e"]
    assert held.untyped_storage().nbytes() == ROW * 4
    out.zero_()  # nor can a caller's result write into the cache
    assert cache.get(["p3"], encode)["e"][0, 0] == 3.0


def test_no_cache_and_rows_bigger_than_the_budget_are_not_held() -> None:
    encode = Encoder()
    off = PromptCache(0, torch.device("cpu"))
    off.get(["a", "b"], encode)
    off.get(["a"], encode)
    assert encode.calls == [["a", "b"], ["a"]]
    assert off.stats() == {
        "hits": 0,
        "misses": 3,
        "evictions": 0,
        "entries": 0,
        "bytes": 0,
        "max_bytes": 0,
    }
    small = PromptCache(ROW * 4 - 1, torch.device("cpu"))
    small.get(["a"], encode)
    assert len(small) == 0 and small.stats()["evictions"] == 0
    with pytest.raises(ValueError, match=r"max_bytes must be >= 0 \(0: no cache\), got -1"):
        PromptCache(-1, torch.device("cpu"))


def test_rows_kept_on_the_cpu_come_back_on_the_policy_device() -> None:
    """Held on the CPU, returned on ``device`` (here "meta", a device that is not the CPU)."""
    cache, encode = PromptCache(4 * ROW * 4, torch.device("meta"), torch.device("cpu")), Encoder()
    miss = cache.get(["a", "b"], encode)
    hit = cache.get(["b", "a", "b"], encode)
    assert encode.calls == [["a", "b"]]
    assert miss["e"].device.type == "meta" and hit["e"].shape == (3, ROW)
    assert hit["e"].device.type == "meta"
    assert all(row["e"].device.type == "cpu" for row in cache._rows.values())


def test_metrics_from_two_snapshots() -> None:
    before = {"hits": 10, "misses": 4, "evictions": 1, "entries": 3, "bytes": MIB, "max_bytes": 0}
    after = {
        "hits": 16,
        "misses": 6,
        "evictions": 4,
        "entries": 3,
        "bytes": 3 * MIB,
        "max_bytes": 0,
    }
    assert prompt_cache_metrics(before, after) == {
        "cache/prompt_hit_rate": 0.75,  # 6 hits, 2 misses
        "cache/prompt_mb": 3.0,
        "cache/prompt_evictions": 3.0,
    }

    def two_processes(t: torch.Tensor, op: str) -> torch.Tensor:  # two identical processes
        assert op == "sum"
        return 2 * t

    assert prompt_cache_metrics(before, after, two_processes) == {
        "cache/prompt_hit_rate": 0.75,
        "cache/prompt_mb": 3.0,  # the mean over processes
        "cache/prompt_evictions": 6.0,  # the sum
    }
    assert math.isnan(prompt_cache_metrics(after, after)["cache/prompt_hit_rate"])
    assert prompt_cache_metrics(None, None) == {}


# --- on the tiny SD3 and FLUX pipelines ------------------------------------------------------


def bytes_per_prompt(family, policy) -> int:
    """The documented size: SD3 (77 + L)·d + pooled, FLUX L·d + pooled values (77: CLIP's
    tokens, here the tiny tokenizers' CLIP_MAX_LENGTH; d the T5 width), 4 bytes each (float32)."""
    config = policy.transformer.config
    tokens = MAX_SEQUENCE_LENGTH + (CLIP_MAX_LENGTH if family.name == "sd3" else 0)
    return (tokens * config.joint_attention_dim + config.pooled_projection_dim) * 4


def test_the_byte_bound_holds_after_many_prompts(family) -> None:
    prompts = distinct_prompts(60)
    one = cond_nbytes(family.policy().encode_prompts(prompts[:1]))
    assert one == bytes_per_prompt(family, family.policy())  # 2640 (SD3), 1088 (FLUX)
    held = 7
    policy = family.policy(prompt_cache_mb=held * one / MIB)
    for i in range(0, len(prompts), 4):  # 4 new prompts per call, like a small iteration
        cond = policy.encode_prompts(prompts[i : i + 4] + prompts[max(0, i - 2) : i])
        stats = policy.cache_stats()
        assert stats["bytes"] <= stats["max_bytes"] == held * one
        assert stats["bytes"] == stats["entries"] * one
        assert cond["prompt_embeds"].shape[0] == 4 + min(i, 2)
    assert policy.cache_stats()["entries"] == held
    assert policy.cache_stats()["evictions"] == len(prompts) - held
    assert policy.num_cached_prompts == held


def test_cached_and_uncached_encodings_give_identical_velocities(family) -> None:
    cached, uncached = family.policy(), family.policy(prompt_cache_mb=0)
    first = cached.encode_prompts(PROMPTS)
    hit = cached.encode_prompts(PROMPTS)
    assert cached.cache_stats()["hits"] == len(PROMPTS)
    fresh = uncached.encode_prompts(PROMPTS)
    assert uncached.cache_stats()["entries"] == 0
    x = cached.initial_noise(2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.6)
    guidance = 2.0 if family.name == "sd3" else family.guidance_scale  # SD3: through CFG
    v = [p.velocity(x, sigma, c, guidance) for p, c in [(cached, hit), (uncached, fresh)]]
    torch.testing.assert_close(v[0], v[1], rtol=0, atol=0)
    torch.testing.assert_close(hit, first, rtol=0, atol=0)
    # The unconditional branch of CFG is held apart: neither a lookup nor an entry.
    assert cached.cache_stats()["hits"] == len(PROMPTS) and cached.num_cached_prompts == 2


def test_rows_kept_on_the_cpu_give_the_same_encodings(family) -> None:
    on_device, on_cpu = family.policy(), family.policy(prompt_cache_device="cpu")
    on_cpu.encode_prompts(PROMPTS)
    hit = on_cpu.encode_prompts(PROMPTS[::-1])
    assert on_cpu._cache.store_device == torch.device("cpu")
    assert all(t.device == on_cpu.device for t in hit.values())
    torch.testing.assert_close(hit, on_device.encode_prompts(PROMPTS[::-1]), rtol=0, atol=0)


def test_cache_options_are_refused_before_loading(family) -> None:
    with pytest.raises(ValueError, match=r"prompt_cache_mb must be .* >= 0 .*got -1"):
        family.policy("no/such-model", prompt_cache_mb=-1)
    with pytest.raises(ValueError, match=r"prompt_cache_mb must be a finite number"):
        family.policy("no/such-model", prompt_cache_mb=float("inf"))
    with pytest.raises(ValueError, match=r"prompt_cache_device must be one of \['device', 'cpu'\]"):
        family.policy("no/such-model", prompt_cache_device="gpu")


def test_config_field_is_validated_and_reaches_the_policy(tiny_sd3_path) -> None:
    assert ModelConfig().prompt_cache_mb == 2048.0
    with pytest.raises(ConfigError, match=r"model.prompt_cache_mb: expected a number of MiB >= 0"):
        load_config(overrides=["model.prompt_cache_mb=-1"])
    with pytest.raises(ConfigError, match=r"model.prompt_cache_mb: .* got nan"):
        ModelConfig(prompt_cache_mb=float("nan")).validate()
    cfg = load_config(
        overrides=[
            "model.family=sd3",
            f"model.pretrained={tiny_sd3_path}",
            f"model.resolution={RESOLUTION}",
            f"model.max_sequence_length={MAX_SEQUENCE_LENGTH}",
            "model.prompt_cache_mb=0.5",
        ]
    )
    from flowdppo.trainer.build import POLICY_BUILDERS

    policy = POLICY_BUILDERS["sd3"](cfg.model, torch.device("cpu"), None)
    assert policy.cache_stats()["max_bytes"] == MIB // 2


def test_trainer_hook_reads_the_hit_rate_of_an_iteration(tiny_sd3_path, tmp_path) -> None:
    """The hook proposed for ``Trainer.step``: one snapshot before the iteration, one after.
    A budget of one prompt, below the iteration's two, makes lookups miss and evict."""
    from test_trainer_tiny import _config

    from flowdppo.trainer.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na big blue cat\n")
    family = Family("sd3", None, None, tiny_sd3_path, 1.0)
    rates = {}
    for mb in (2048.0, 2640 / MIB):  # ample; one tiny SD3 prompt
        options = [
            f"model.max_sequence_length={MAX_SEQUENCE_LENGTH}",
            f"model.prompt_cache_mb={mb}",
        ]
        cfg = _config(family, prompts, *options)
        trainer = Trainer(cfg, tmp_path / f"run{mb}")
        trainer.step()  # the first iteration encodes the prompts
        rates[mb] = trainer.step()  # the trainer logs the cache's metrics of each iteration
    ample, starved = rates.values()
    assert ample["cache/prompt_hit_rate"] == 1.0 and ample["cache/prompt_evictions"] == 0
    assert ample["cache/prompt_mb"] == 2 * 2640 / MIB
    assert starved["cache/prompt_hit_rate"] < 1.0 and starved["cache/prompt_evictions"] > 0
    assert starved["cache/prompt_mb"] == 2640 / MIB
