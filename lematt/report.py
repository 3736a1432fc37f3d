"""What a run tells its user: progress, changes and failures, one line each.

Contract: ``info`` is progress (silent under ``--cron``, except in ``--log-file``); ``change``
is a renewal or an action that ran (always shown); ``warn`` and ``failure`` go to stderr,
always. Under ``--cron`` a run where nothing was due prints nothing at all. Every line is one
sentence a user can act on. Lines go through the ``lematt`` logger (``lematt.logs`` gives it
its handlers: timestamps, journal priorities, the log file); when it has none, they are
printed plainly to ``out`` and ``err``. ``live`` is the status line on a terminal
(``lematt.progress``; silent by default): it is erased before every line printed here, so the
two never share a terminal line.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TextIO

from lematt.progress import Progress

_LOGGER = logging.getLogger("lematt")


@dataclass
class Reporter:
    cron: bool = False
    debug: bool = False
    test: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    live: Progress = field(default_factory=Progress)

    def _prefix(self) -> str:
        return "[TEST] " if self.test else ""

    def _emit(self, level: int, text: str, *, quiet: bool = False) -> None:
        if not quiet:
            self.live.clear()
        # Handlers of lematt.logs (marked): another library's or a test harness's handler
        # on the logger does not take the lines away from their streams.
        if any(getattr(h, "lematt_output", False) for h in _LOGGER.handlers):
            _LOGGER.log(level, "%s", text, extra={"quiet": quiet})
        elif not quiet:
            print(text, file=self.err if level >= logging.WARNING else self.out, flush=True)

    def info(self, message: str) -> None:
        self._emit(logging.INFO, f"{self._prefix()}{message}", quiet=self.cron)

    def change(self, message: str) -> None:
        self._emit(logging.INFO, f"{self._prefix()}{message}")

    def warn(self, message: str) -> None:
        self._emit(logging.WARNING, f"{self._prefix()}warning: {message}")

    def failure(self, message: str) -> None:
        self._emit(logging.ERROR, f"{self._prefix()}FAILED: {message}")
