"""One progress line per task: lmms-eval's own bars and debug log kept off the terminal while it runs.

lmms-eval 0.7.3 draws a bar while it builds a task's requests (no description) and one while it
postprocesses ("Postprocessing"), and logs every task YAML it skips at DEBUG through loguru; the
``numexpr`` it imports logs its thread count at INFO. During a task, ``task_progress()`` drops exactly
those bars from stderr (any other output, dataset and hub download bars included, passes), and
``quiet_lmms_eval_logging()`` shows lmms-eval's log from WARNING up. gc2bench's own bar
(``progress_stream()``) writes past the filter: the one line a task shows.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from functools import lru_cache

# A tqdm refresh ("\r" + the bar) of a bar with no description or lmms-eval's "Postprocessing".
LMMS_EVAL_BAR = re.compile(r"^\r(Postprocessing: )?\s*\d+%\|")


class _WithoutLmmsEvalBars:
    """A text stream that forwards to ``stream`` all but lmms-eval's bars (and the newline closing one)."""

    def __init__(self, stream):
        self.stream = stream
        self._dropped_last = False

    def write(self, text: str) -> int:
        dropped = bool(LMMS_EVAL_BAR.match(text)) or (self._dropped_last and text.strip() in ("", "\r"))
        self._dropped_last = dropped
        if not dropped:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


_ORIGINAL_STDERR: list = []


def progress_stream():
    """Where gc2bench's own progress bar writes: stderr, past ``task_progress``'s filter."""
    return _ORIGINAL_STDERR[-1] if _ORIGINAL_STDERR else sys.stderr


@lru_cache(maxsize=1)
def quiet_lmms_eval_logging() -> None:
    """lmms-eval's loguru log from WARNING up (its default handler shows DEBUG), numexpr's INFO line off."""
    from loguru import logger

    with contextlib.suppress(ValueError):
        logger.remove(0)  # loguru's default handler; a handler the user added stays
        logger.add(sys.stderr, level="WARNING")
    logging.getLogger("numexpr").setLevel(logging.WARNING)


@contextlib.contextmanager
def task_progress():
    """Within the block, stderr without lmms-eval's request and postprocessing bars."""
    quiet_lmms_eval_logging()
    _ORIGINAL_STDERR.append(sys.stderr)
    try:
        with contextlib.redirect_stderr(_WithoutLmmsEvalBars(sys.stderr)):
            yield
    finally:
        _ORIGINAL_STDERR.pop()
