"""Tests for flowdppo/rewards/compute.py: chunking, devices, validation, failure policy."""

from typing import Any

import pytest
import torch

from flowdppo.rewards.base import RewardOutput
from flowdppo.rewards.compute import (
    LoadedReward,
    RewardError,
    RewardSpec,
    build_rewards,
    compute_rewards,
)


class FakeReward:
    """Score = mean pixel value + index in the chunk; records the chunk sizes it saw."""

    def __init__(self, batch_size: int = 3, fail_on_call: int | None = None, mode: str = "ok"):
        self.name = "fake"
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call
        self.mode = mode

    def __call__(self, images, prompts, metadata: list[dict[str, Any]]) -> RewardOutput:
        self.calls.append(images.shape[0])
        assert len(prompts) == len(metadata) == images.shape[0]
        if self.fail_on_call is not None and len(self.calls) - 1 == self.fail_on_call:
            raise RuntimeError("model exploded")
        scores = images.mean(dim=(1, 2, 3))
        if self.mode == "nan":
            scores = scores.clone()
            scores[0] = float("nan")
        if self.mode == "short":
            scores = scores[:-1]
        if self.mode == "not_output":
            return scores  # type: ignore[return-value]
        return RewardOutput(scores=scores, details={"twice": 2 * scores})


def _batch(b: int = 7):
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 4, 4) / 10
    return images, [f"p{i}" for i in range(b)], [{"i": i} for i in range(b)]


def test_chunks_by_batch_size_and_concatenates_in_order():
    fake = FakeReward(batch_size=3)
    images, prompts, meta = _batch(7)
    out = compute_rewards([LoadedReward("fake", 1.0, fake)], images, prompts, meta)
    assert fake.calls == [3, 3, 1]
    torch.testing.assert_close(out.scores["fake"], torch.arange(7.0) / 10, rtol=0, atol=1e-7)
    torch.testing.assert_close(out.details["fake/twice"], torch.arange(7.0) / 5, rtol=0, atol=1e-7)
    assert out.valid.all() and out.metrics["reward/dropped"] == 0.0
    assert out.metrics["reward/fake_mean"] == pytest.approx(0.3)


def test_exception_raises_error_naming_the_reward():
    images, prompts, meta = _batch(7)
    lr = LoadedReward("fake", 1.0, FakeReward(fail_on_call=1))
    with pytest.raises(RewardError, match="reward 'fake' raised RuntimeError: model exploded"):
        compute_rewards([lr], images, prompts, meta)


def test_exception_with_drop_marks_the_chunk_invalid_and_counts_it():
    images, prompts, meta = _batch(7)
    lr = LoadedReward("fake", 1.0, FakeReward(batch_size=3, fail_on_call=1))
    out = compute_rewards([lr], images, prompts, meta, on_error="drop")
    expected_valid = torch.tensor([True, True, True, False, False, False, True])
    assert torch.equal(out.valid, expected_valid)
    assert out.metrics["reward/dropped"] == 3.0 and out.metrics["reward/fake_dropped"] == 3.0
    assert torch.isfinite(out.scores["fake"]).all()
    assert torch.isnan(out.details["fake/twice"][3:6]).all()
    assert out.metrics["reward/fake_mean"] == pytest.approx((0 + 1 + 2 + 6) / 40)


def test_nan_raises_or_drops_only_that_sample():
    images, prompts, meta = _batch(4)
    with pytest.raises(
        RewardError, match=r"'fake' returned non-finite scores for samples \[0, 2\]"
    ):
        compute_rewards(
            [LoadedReward("fake", 1.0, FakeReward(2, mode="nan"))], images, prompts, meta
        )
    lr = LoadedReward("fake", 1.0, FakeReward(2, mode="nan"))
    out = compute_rewards([lr], images, prompts, meta, on_error="drop")
    assert out.valid.tolist() == [False, True, False, True]
    assert torch.isfinite(out.matrix()).all()
    assert out.metrics["reward/dropped"] == 2.0


def test_wrong_length_names_the_reward_and_shapes():
    images, prompts, meta = _batch(4)
    lr = LoadedReward("fake", 1.0, FakeReward(4, mode="short"))
    with pytest.raises(RewardError, match=r"'fake' returned scores of shape \(3,\) for 4 images"):
        compute_rewards([lr], images, prompts, meta)


def test_wrong_return_type_is_an_error():
    images, prompts, meta = _batch(2)
    lr = LoadedReward("fake", 1.0, FakeReward(4, mode="not_output"))
    with pytest.raises(RewardError, match="'fake' returned Tensor, expected RewardOutput"):
        compute_rewards([lr], images, prompts, meta)


def test_all_dropped_is_an_error():
    images, prompts, meta = _batch(2)
    lr = LoadedReward("fake", 1.0, FakeReward(4, fail_on_call=0))
    with pytest.raises(RewardError, match="all 2 samples were dropped: fake_dropped=2"):
        compute_rewards([lr], images, prompts, meta, on_error="drop")


def test_drop_in_one_reward_invalidates_sample_for_all():
    images, prompts, meta = _batch(4)
    good = LoadedReward("good", 1.0, FakeReward(4))
    bad = LoadedReward("bad", 2.0, FakeReward(1, fail_on_call=2))
    out = compute_rewards([good, bad], images, prompts, meta, on_error="drop")
    assert out.valid.tolist() == [True, True, False, True]
    assert out.metrics["reward/good_dropped"] == 0.0 and out.metrics["reward/bad_dropped"] == 1.0
    assert out.scores["good"][2] == 0.0  # invalid samples carry 0, never NaN


def test_weighted_sum_matches_hand_computation():
    images, prompts, meta = _batch(3)  # fake scores 0.0, 0.1, 0.2
    a = LoadedReward("a", 0.5, FakeReward(4))
    b = LoadedReward("b", -2.0, FakeReward(4))
    out = compute_rewards([a, b], images, prompts, meta)
    assert out.names == ["a", "b"] and out.matrix().shape == (3, 2)
    expected = torch.tensor([0.5 * 0.0 - 2.0 * 0.0, 0.5 * 0.1 - 2.0 * 0.1, 0.5 * 0.2 - 2.0 * 0.2])
    torch.testing.assert_close(out.weighted_sum(), expected, rtol=0, atol=1e-6)


def test_mismatched_prompts_is_an_error():
    images, prompts, meta = _batch(3)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        compute_rewards([LoadedReward("a", 1.0, FakeReward())], images, prompts[:2], meta)
    with pytest.raises(ValueError, match="on_error must be"):
        compute_rewards([LoadedReward("a", 1.0, FakeReward())], images, prompts, meta, on_error="x")


def test_build_rewards_from_yaml_mappings():
    loaded = build_rewards(
        [
            {"name": "jpeg_compressibility", "weight": 0.25, "kwargs": {"quality": 50}},
            RewardSpec("jpeg_incompressibility"),
        ]
    )
    assert [(lr.name, lr.weight) for lr in loaded] == [
        ("jpeg_compressibility", 0.25),
        ("jpeg_incompressibility", 1.0),
    ]
    assert loaded[0].reward.quality == 50


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "jpeg_compressibility", "wieght": 1}, r"unknown key\(s\) \['wieght'\]"),
        ({"name": "nope"}, "unknown reward 'nope'; available: .*jpeg_compressibility"),
        (
            {"name": "jpeg_compressibility", "kwargs": {"qual": 1}},
            r"unknown option\(s\) \['qual'\]",
        ),
        ({"name": "jpeg_compressibility", "weight": float("nan")}, "weight must be a finite"),
        ({"weight": 1.0}, "needs a 'name'"),
    ],
)
def test_build_rewards_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_rewards([spec])


def test_build_rewards_rejects_duplicates_and_empty():
    with pytest.raises(ValueError, match=r"duplicates \['jpeg_compressibility'\]"):
        build_rewards([{"name": "jpeg_compressibility"}, {"name": "jpeg_compressibility"}])
    with pytest.raises(ValueError, match="at least one reward"):
        build_rewards([])


class MetaReward:
    """Score = metadata[key] (NaN allowed), to feed hand-chosen rewards through compute_rewards."""

    def __init__(self, key: str):
        self.key, self.name, self.batch_size, self.device = key, key, 2, torch.device("cpu")

    def __call__(self, images, prompts, metadata):
        return RewardOutput(scores=torch.tensor([m[self.key] for m in metadata]))


def _hand_batch():
    """Groups (0, 0, 1, 1, 1); reward a = (1, 3, 2, 2, ·), b = (0, 2, 4, 0, NaN): sample 4 drops."""
    a, b = [1.0, 3.0, 2.0, 2.0, 5.0], [0.0, 2.0, 4.0, 0.0, float("nan")]
    meta = [{"a": x, "b": y} for x, y in zip(a, b, strict=True)]
    rewards = [LoadedReward("a", 0.5, MetaReward("a")), LoadedReward("b", 2.0, MetaReward("b"))]
    out = compute_rewards(rewards, torch.zeros(5, 3, 2, 2), ["p"] * 5, meta, on_error="drop")
    group_ids = torch.tensor([0, 0, 1, 1, 1])
    return out.matrix()[out.valid], group_ids[out.valid], out


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [
        # sum: r = 0.5a + 2b = (0.5, 5.5, 5, 1); groups (0.5, 5.5) mean 3 std 2.5, (5, 1) mean 3 std 2.
        ("sum", [-1.0, 1.0, 1.0, -1.0]),
        # gdpo: a → (-1, 1, 0, 0) (group 1 constant), b → (-1, 1, 1, -1); 0.5a + 2b =
        # (-2.5, 2.5, 2, -2), batch mean 0, std sqrt(20.5 / 4).
        ("gdpo", [v / (20.5 / 4) ** 0.5 for v in (-2.5, 2.5, 2.0, -2.0)]),
    ],
)
def test_multi_reward_weighting_matches_hand_computation(aggregate, expected):
    from flowdppo.core.advantages import group_advantages

    matrix, group_ids, out = _hand_batch()
    assert out.valid.tolist() == [True, True, True, True, False]
    assert torch.isfinite(matrix).all()  # the NaN sample never reaches the advantages
    adv = group_advantages(
        matrix, group_ids, weights=out.weights, std_mode="group", aggregate=aggregate
    )
    torch.testing.assert_close(adv, torch.tensor(expected), rtol=0, atol=1e-6)


def test_every_reward_module_is_registered_by_builtin():
    from flowdppo.rewards.base import available_rewards

    expected = {"jpeg_compressibility", "jpeg_incompressibility", "clip_score", "pickscore"}
    expected |= {"aesthetic", "hpsv2", "imagereward", "ocr", "remote"}
    assert expected <= set(available_rewards())


def test_reward_batch_concat_equals_scoring_the_whole_batch():
    from flowdppo.rewards.compute import RewardBatch, build_rewards, compute_rewards

    rewards = build_rewards(
        [{"name": "jpeg_incompressibility"}, {"name": "jpeg_compressibility", "weight": 0.5}]
    )
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = [f"p{i}" for i in range(5)]
    whole = compute_rewards(rewards, images, prompts)
    parts = RewardBatch.concat(
        [
            compute_rewards(rewards, images[:2], prompts[:2]),
            compute_rewards(rewards, images[2:], prompts[2:]),
        ]
    )
    assert parts.names == whole.names and torch.equal(parts.valid, whole.valid)
    assert all(torch.equal(parts.scores[n], whole.scores[n]) for n in whole.names)
    torch.testing.assert_close(parts.weighted_sum(), whole.weighted_sum())
    with pytest.raises(ValueError, match="same rewards"):
        RewardBatch.concat([whole, compute_rewards(rewards[:1], images, prompts)])
