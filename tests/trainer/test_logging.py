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
