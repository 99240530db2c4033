"""Exit codes of the ``flowdppo`` commands (docs/reliability.md) and the errors behind them.

0 done; 1 the run failed at run time (a reward error, non-finite training); 2 a user error
(arguments, config, input files, a run directory that cannot be used), one line without a
traceback (``--debug`` shows it); 130 a Ctrl-C outside training. An unexpected exception (a
bug) propagates with its traceback (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from flowdppo.config import ConfigError


class UserError(Exception):
    """A bad argument or input: printed as one line, exit code 2."""


# User errors (exit 2): bad arguments, config, input files and directories. ConfigError and
# UnicodeDecodeError are ValueErrors; OSError covers a path that is a folder, unreadable or full.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, ValueError, OSError)


def run_errors() -> tuple[type[BaseException], ...]:
    """Run-time failures (exit 1), reported in one line: a reward, non-finite training, a
    checkpoint that could not be written, another process that stopped or hung."""
    from flowdppo.rewards.compute import RewardError
    from flowdppo.trainer.checkpoint import CheckpointWriteError
    from flowdppo.trainer.collective import CollectiveError
    from flowdppo.trainer.update import NonFiniteError

    return (RewardError, NonFiniteError, CheckpointWriteError, CollectiveError)


def run_command(func: Callable[[Any], int | None], args: Any, debug: bool) -> int:
    """``func(args)``'s exit code, an error turned into its code and one line on stderr (with
    ``debug``: raised, traceback and all)."""
    try:
        return int(func(args) or 0)
    except SystemExit as stop:  # a command's own one-line refusal: a user error
        if debug or not isinstance(stop.code, str):
            raise
        print(f"error: {stop.code}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: nothing saved
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        if isinstance(err, USER_ERRORS):
            code = 2
        elif isinstance(err, run_errors()):
            code = 1
        else:
            raise  # a bug: the traceback is what a report needs
        print(f"error: {err}", file=sys.stderr)
        return code
