"""What a run tells its user: progress, changes and failures, one line each.

Contract: ``info`` is progress (silent under ``--cron``); ``change`` is a renewal or an action
that ran (always shown); ``failure`` goes to stderr, always. Under ``--cron`` a run where
nothing was due prints nothing at all. Every line is one sentence a user can act on.
``live`` is the status line on a terminal (``lematt.progress``; silent by default): it is
erased before every line printed here, so the two never share a terminal line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from lematt.progress import Progress


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

    def info(self, message: str) -> None:
        if not self.cron:
            self.live.clear()
            print(f"{self._prefix()}{message}", file=self.out, flush=True)

    def change(self, message: str) -> None:
        self.live.clear()
        print(f"{self._prefix()}{message}", file=self.out, flush=True)

    def warn(self, message: str) -> None:
        self.live.clear()
        print(f"{self._prefix()}warning: {message}", file=self.err, flush=True)

    def failure(self, message: str) -> None:
        self.live.clear()
        print(f"{self._prefix()}FAILED: {message}", file=self.err, flush=True)
