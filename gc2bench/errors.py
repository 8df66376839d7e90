"""gc2bench's errors: one base class that carries its exit status, reported in one line.

Every error a user can cause or fix (a bad config value or tool option, a model that cannot be
loaded, failed tasks) is a ``Gc2benchError``. ``cli.main`` and ``run.run_job`` catch it once and
call ``report``: one ``error: ...`` line on stderr, no traceback, the class's ``exit_status``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


class Gc2benchError(Exception):
    """An error reported in one line; the process exits with ``exit_status``."""

    exit_status = 1


class ConfigError(Gc2benchError, ValueError):
    """A config value, override or tool option is invalid; the message names the key, the value and
    what is allowed. Raised before anything expensive is loaded."""

    exit_status = 2


class ModelLoadError(Gc2benchError):
    """The model could not be found or loaded, or its transformers code is not one gc2bench can hook;
    the message names the path, id or version."""

    exit_status = 2


class RunFailed(Gc2benchError):
    """Tasks of a run failed; their records (status: failed) say why, and a restart retries them."""

    exit_status = 1


def report(error: Gc2benchError, label: str = "") -> int:
    """Print ``error`` as one ``error: ...`` line on stderr; return its exit status."""
    print(f"error: {label + ' ' if label else ''}{error}", file=sys.stderr, flush=True)
    return error.exit_status
