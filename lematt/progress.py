"""The live status line on a terminal: orders (done, failed, in flight, per second, ETA), then
deploys (per host).

Contract: ``Progress(stream)`` draws one line on ``stream`` (the terminal's stderr), redrawn
in place with a carriage return and erase-line, at most every ``INTERVAL`` seconds;
``Progress(None)`` (``Progress.on_terminal`` when the stream is no terminal or the run is
quiet) does nothing at all, so without a terminal not one byte of it is written. The order
and deploy code feed it events (``orders_begin``, ``order_started``, ``order_done``,
``orders_end``, ``deploy_begin``, ``step_done``, ``host_done``, ``deploy_end``); the
``Reporter`` calls ``clear`` before every line it prints, so a normal line never shares a
terminal line with the status line. ``running()`` is the async context that redraws while
nothing happens (the rate and ETA move on) and clears the line when it ends. All calls come
from the event loop's thread. Imports nothing of lematt.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO

INTERVAL = 0.25  # seconds between redraws: a few per second, no flicker, little output
CLEAR = "\r\x1b[K"  # to the start of the line, erase to its end
DEFAULT_WIDTH = 80


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, stream: TextIO | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self._clock = clock
        self._shown = False  # a status line is on the terminal now
        self._last_draw = float("-inf")
        self._drawn = ""  # the text on the terminal while _shown
        self._phase = ""  # "", "orders", "deploy"
        self._total = self._ok = self._failed = self._started = 0
        self._began = 0.0
        self._hosts: dict[str, list[int]] = {}  # host -> [steps done, steps]
        self._hosts_done = self._hosts_failed = 0

    @classmethod
    def on_terminal(cls, stream: TextIO, wanted: bool = True) -> Progress:
        """A live line on ``stream`` if it is a terminal and ``wanted``, else a silent one."""
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(stream if tty and wanted else None)

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    # -- events ---------------------------------------------------------------------------
    def orders_begin(self, total: int) -> None:
        if not self.enabled:
            return
        self._phase, self._total, self._began = "orders", total, self._clock()
        self._ok = self._failed = self._started = 0
        self.draw()  # a phase shows at once, whatever was printed just before

    def order_started(self) -> None:
        if self.enabled:
            self._started += 1
            self._changed()

    def order_done(self, ok: bool) -> None:
        if not self.enabled:
            return
        if ok:
            self._ok += 1
        else:
            self._failed += 1
        self._changed()

    def orders_end(self) -> None:
        self._end()

    def deploy_begin(self, steps_per_host: dict[str, int]) -> None:
        if not self.enabled:
            return
        self._phase = "deploy"
        self._hosts = {host: [0, steps] for host, steps in steps_per_host.items()}
        self._hosts_done = self._hosts_failed = 0
        self.draw()

    def step_done(self, host: str) -> None:
        if self.enabled and host in self._hosts:
            self._hosts[host][0] += 1
            self._changed()

    def host_done(self, host: str, ok: bool) -> None:
        if self.enabled and self._hosts.pop(host, None) is not None:
            self._hosts_done += 1
            self._hosts_failed += not ok
            self._changed()

    def deploy_end(self) -> None:
        self._end()

    # -- drawing --------------------------------------------------------------------------
    def text(self) -> str:
        """The status line as it would be drawn now (no width limit)."""
        if self._phase == "orders":
            finished = self._ok + self._failed
            parts = [f"orders {finished}/{self._total}: {self._ok} renewed",
                     f"{self._failed} failed"]
            if self._started:  # known only where the orders run in this process
                parts.append(f"{max(0, self._started - finished)} in flight")
            elapsed = self._clock() - self._began
            if finished and elapsed > 0:
                rate = finished / elapsed
                parts.append(f"{rate:.1f}/s")
                parts.append(f"ETA {_duration((self._total - finished) / rate)}")
            else:
                parts.append("ETA ?")
            return ", ".join(parts)
        if self._phase == "deploy":
            total = self._hosts_done + len(self._hosts)
            head = f"deploy {self._hosts_done}/{total} hosts done, {self._hosts_failed} failed"
            busy = [f"{host} {done}/{steps}" for host, (done, steps) in self._hosts.items()]
            return f"{head}: {', '.join(busy)}" if busy else head
        return ""

    def _width(self) -> int:
        assert self.stream is not None
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns or DEFAULT_WIDTH

    def draw(self) -> None:
        """Draw the line now (throttling is the caller's: ``_changed`` and ``tick``)."""
        if self.stream is None or not self._phase:
            return
        # One column short of the width: a line that fills it makes some terminals wrap,
        # and a wrapped line can no longer be erased with a carriage return.
        text = self.text()[:self._width() - 1]
        self._last_draw = self._clock()
        if self._shown and text == self._drawn:
            return  # the same words again: the terminal already shows them
        self._drawn = text
        self.stream.write(CLEAR + text)
        self.stream.flush()
        self._shown = True

    def tick(self) -> None:
        """Redraw if the last drawing is at least ``INTERVAL`` old."""
        if self._phase and self._clock() - self._last_draw >= INTERVAL:
            self.draw()

    def clear(self) -> None:
        """Erase the status line (before a normal line is printed); the next event or tick
        draws it again below that line."""
        if self._shown and self.stream is not None:
            self.stream.write(CLEAR)
            self.stream.flush()
            self._shown = False
            # The next drawing waits a moment: lines printed in a burst are not each
            # followed by a status line.
            self._last_draw = self._clock()

    def _changed(self) -> None:
        self.tick()

    def _end(self) -> None:
        if self.enabled:
            self.clear()
            self._phase = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Keep the line fresh while the block runs; erase it when the block ends."""
        if not self.enabled:
            yield
            return
        import anyio

        async with anyio.create_task_group() as tg:
            async def redraw() -> None:
                while True:
                    await anyio.sleep(INTERVAL)
                    self.tick()

            tg.start_soon(redraw)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                self._end()
