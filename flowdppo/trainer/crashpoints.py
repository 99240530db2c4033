"""Named moments of a run at which the crash-safety tests kill it.

``FLOWDPPO_KILL_AT=NAME[:N]`` makes the process send itself SIGKILL the N-th time (default: the
first) it reaches the moment ``NAME`` (one of ``POINTS``): no handler runs, no buffer is
flushed, no file is closed, exactly as ``kill -9`` from outside. ``tests/trainer/test_kill.py``
kills a run at each moment and checks that the resumed run ends bitwise equal to an
uninterrupted one (docs/reliability.md); unset, each moment costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "FLOWDPPO_KILL_AT"

POINTS = {
    "eval": "an evaluation computed, not yet logged",
    "rollout": "a forward batch sampled, its rewards being computed on the reward thread",
    "update": "an optimizer step taken, the iteration's other steps not yet",
    "logged": "an iteration's training line logged, its checkpoint not yet written",
    "checkpoint_write": "a checkpoint's temporary folder half written",
    "checkpoint_renamed": "a checkpoint renamed into place, the 'latest' marker not yet moved",
}

_hits: Counter[str] = Counter()


def parse(spec: str) -> tuple[str, int]:
    """``NAME[:N]`` → (NAME, N); an unknown name or an N < 1 is an error naming the variable."""
    name, _, count = spec.partition(":")
    if name not in POINTS or not (count or "1").isdigit() or int(count or "1") < 1:
        raise ValueError(
            f"{ENV}={spec!r}: expected NAME or NAME:N with NAME one of {sorted(POINTS)} and N >= 1"
        )
    return name, int(count or "1")


def crash_point(name: str) -> None:
    """Mark the moment ``name``; SIGKILL this process if ``FLOWDPPO_KILL_AT`` asks for it."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, count = parse(spec)
    _hits[name] += 1
    if name == target and _hits[name] == count:
        os.kill(os.getpid(), signal.SIGKILL)
