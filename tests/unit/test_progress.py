"""The terminal status line: what it says, how often it is drawn, and that the reporter's
lines never share a terminal line with it."""

from __future__ import annotations

import io

from lematt.progress import CLEAR, INTERVAL, Progress
from lematt.report import Reporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_nothing_is_written() -> None:
    stream = io.StringIO()  # isatty() is False
    live = Progress.on_terminal(stream)
    assert not live.enabled
    reporter = Reporter(out=stream, err=stream, live=live)
    live.orders_begin(3)
    live.order_started()
    reporter.change("renewed a")
    live.order_done(True)
    live.deploy_begin({"local": 2})
    live.step_done("local")
    live.host_done("local", True)
    live.deploy_end()
    assert stream.getvalue() == "renewed a\n"


def test_orders_line_counts_rate_and_eta_and_is_throttled() -> None:
    stream, clock = io.StringIO(), Clock()
    live = Progress(stream, clock=clock)
    live.orders_begin(4)
    assert stream.getvalue() == CLEAR + "orders 0/4: 0 renewed, 0 failed, ETA ?"
    live.order_started()
    live.order_started()
    clock.now += INTERVAL / 2
    live.order_done(True)  # too soon after the last drawing: not drawn
    assert stream.getvalue().count(CLEAR) == 1
    clock.now += 1.0 - INTERVAL / 2  # 1 s after the start: 1 done, 1/s, 3 left
    live.tick()
    assert stream.getvalue().endswith(
        CLEAR + "orders 1/4: 1 renewed, 0 failed, 1 in flight, 1.0/s, ETA 3s")
    live.order_done(False)
    clock.now += INTERVAL
    live.tick()
    assert "orders 2/4: 1 renewed, 1 failed, 0 in flight" in stream.getvalue()
    live.orders_end()
    assert stream.getvalue().endswith(CLEAR)
    before = stream.getvalue()
    clock.now += 10
    live.tick()  # no phase: nothing drawn
    assert stream.getvalue() == before


def test_deploy_line_shows_each_busy_host() -> None:
    stream, clock = io.StringIO(), Clock()
    live = Progress(stream, clock=clock)
    live.deploy_begin({"local": 2, "[127.0.0.2]:22": 3})
    live.step_done("local")
    live.host_done("[127.0.0.2]:22", False)
    assert live.text() == "deploy 1/2 hosts done, 1 failed: local 1/2"


def test_reporter_clears_the_line_before_each_line_and_nothing_interleaves() -> None:
    stream, clock = io.StringIO(), Clock()
    live = Progress(stream, clock=clock)
    reporter = Reporter(out=stream, err=stream, live=live)
    live.orders_begin(2)
    reporter.change("renewed a")
    reporter.failure("b: refused")
    clock.now += INTERVAL
    live.tick()
    live.orders_end()
    text = stream.getvalue()
    lines = text.split("\n")
    # Each printed line is whole after the last erase on its terminal line.
    assert [line.rsplit(CLEAR, 1)[-1] for line in lines] == [
        "renewed a", "FAILED: b: refused", ""]
    assert lines[0].startswith(CLEAR + "orders 0/2")


def test_long_lines_are_cut_to_the_terminal_width() -> None:
    stream = io.StringIO()
    live = Progress(stream)
    live.deploy_begin({f"host{i}.example.test": 9 for i in range(40)})
    assert len(stream.getvalue()) == len(CLEAR) + 79  # no terminal size known: 80 columns
