"""Console helpers: progress bars, and the entry points' error handling.

``cli(main)`` runs an entry point's ``main``; a user error (a bad recipe, data, checkpoint, run folder or a
run that diverged) prints one short message naming the file or key and what to do, and exits with status 2.
The traceback only with ``--debug`` on the command line or ``DRSFORMER_DEBUG=1`` in the environment.
"""

from __future__ import annotations

import os
import sys


class UserError(ValueError):
    """A problem with what the user gave (file, key, folder); the message says what is wrong and what to do."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type that means bad input rather than a bug (imported lazily: light start-up)."""
    from compress.data import DataError
    from compress.recipe import RecipeError
    from compress.train import NonFiniteLoss
    from drsformer import ConfigError
    from drsformer.model import CheckpointError

    return UserError, DataError, RecipeError, ConfigError, CheckpointError, NonFiniteLoss, FileNotFoundError


def cli(main, argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DRSFORMER_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if debug:
        main(argv)
        return
    try:
        main(argv)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        print("(the full traceback: add --debug or set DRSFORMER_DEBUG=1)", file=sys.stderr)
        sys.exit(2)


def progress_bar(*columns, enabled: bool = True):
    """A rich progress bar: description, bar, done/total, ``columns``, time left; silent when not ``enabled``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *columns,
                    TimeRemainingColumn(), disable=not enabled)  # fmt: skip
