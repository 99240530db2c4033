"""``FLOWDPPO_KILL_AT`` parsing; the kills themselves are in ``test_kill.py``."""

from __future__ import annotations

import pytest

from flowdppo.trainer import crashpoints
from flowdppo.trainer.crashpoints import ENV, crash_point, parse


def test_parse_reads_name_and_count() -> None:
    assert parse("update") == ("update", 1)
    assert parse("checkpoint_write:12") == ("checkpoint_write", 12)


@pytest.mark.parametrize("spec", ["updat", "update:0", "update:-1", "update:x", ":2"])
def test_a_bad_spec_is_an_error_naming_the_variable(spec: str) -> None:
    with pytest.raises(ValueError, match=rf"{ENV}='{spec}': expected NAME or NAME:N"):
        parse(spec)


def test_a_point_other_than_the_target_only_counts(monkeypatch) -> None:
    monkeypatch.setattr(crashpoints, "_hits", crashpoints.Counter())
    monkeypatch.delenv(ENV, raising=False)
    crash_point("update")  # unset: not even counted
    assert crashpoints._hits["update"] == 0
    monkeypatch.setenv(ENV, "update:3")
    crash_point("update")
    crash_point("update")  # the 2nd of 3: still alive
    crash_point("rollout")
    assert crashpoints._hits == {"update": 2, "rollout": 1}
    monkeypatch.setenv(ENV, "bogus")
    with pytest.raises(ValueError, match="bogus"):  # a typo is an error, not a run never killed
        crash_point("update")
