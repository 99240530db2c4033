"""``flowdppo.trainer.logging``: metric lines, non-finite values, and truncation on resume."""

from __future__ import annotations

import math

import pytest

from flowdppo.trainer.logging import RunLogger, read_metrics


def test_lines_are_sorted_json_with_null_for_non_finite(tmp_path) -> None:
    log = RunLogger(tmp_path)
    log.log("train", 1, {"b": 2.0, "a": math.nan, "c": math.inf})
    log.close()
    assert (
        tmp_path / "metrics.jsonl"
    ).read_text() == '{"kind": "train", "iter": 1, "a": null, "b": 2.0, "c": null}\n'
    assert list((tmp_path / "tensorboard").glob("events.*"))


def test_resume_drops_the_lines_after_the_checkpoint(tmp_path) -> None:
    log = RunLogger(tmp_path)
    for i in (1, 2, 3):
        log.log("train", i, {"x": float(i)})
    log.log("eval", 2, {"eval/x": 1.0})
    log.close()
    RunLogger(tmp_path, resume_iter=2).close()
    assert [(r["kind"], r["iter"]) for r in read_metrics(tmp_path)] == [
        ("train", 1),
        ("train", 2),
        ("eval", 2),
    ]
    assert [r["iter"] for r in read_metrics(tmp_path, "train")] == [1, 2]


def test_disabled_logger_writes_nothing(tmp_path) -> None:
    RunLogger(tmp_path, enabled=False).log("train", 1, {"x": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="flowdppo run directory"):
        read_metrics(tmp_path)


def test_one_line_per_kind_and_iteration_whatever_happens(tmp_path) -> None:
    """A run started over (``resume_iter=-1``) starts empty; a (kind, iteration) logged again
    replaces its line; ``has`` says what is there."""
    log = RunLogger(tmp_path)
    log.log("eval", 0, {"eval/x": 1.0})
    log.log("train", 1, {"x": 1.0})
    assert log.has("eval", 0) and not log.has("eval", 1)
    log.log("eval", 0, {"eval/x": 2.0})
    log.close()
    rows = read_metrics(tmp_path)
    assert [(r["kind"], r["iter"]) for r in rows] == [("train", 1), ("eval", 0)]
    assert rows[1]["eval/x"] == 2.0
    again = RunLogger(tmp_path, resume_iter=0)
    assert again.has("eval", 0) and not again.has("train", 1)
    again.close()
    RunLogger(tmp_path, resume_iter=-1).close()
    assert read_metrics(tmp_path) == []


def test_a_line_cut_short_by_a_crash_is_dropped_and_a_broken_one_named(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iter": 1}\n{"kind": "train", "it')  # killed mid-write
    assert [r["iter"] for r in read_metrics(tmp_path)] == [1]
    log = RunLogger(tmp_path, resume_iter=1)
    log.log("train", 2, {})
    log.close()
    assert [r["iter"] for r in read_metrics(tmp_path)] == [1, 2]
    path.write_text('{"kind": "train", "iter": 1}\nnot json\n{"kind": "train", "iter": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON metric line"):
        read_metrics(tmp_path)


def test_tensorboard_holds_every_scalar_after_close(tmp_path) -> None:
    """Scalars go to a background writer without a flush per line: closing writes them all."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLogger(tmp_path)
    for i in range(1, 31):  # more events than a 10-event queue would hold
        log.log("train", i, {"reward/mean": i / 10, "loss/total": -float(i), "x": math.nan})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss/total", "reward/mean"]  # no NaN scalar
    got = [(e.step, e.value) for e in events.Scalars("reward/mean")]
    assert got == [(i, pytest.approx(i / 10)) for i in range(1, 31)]
    assert [e.value for e in events.Scalars("loss/total")] == [-float(i) for i in range(1, 31)]
