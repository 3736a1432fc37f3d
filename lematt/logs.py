"""Where lematt's lines go and how they look: handlers of the ``lematt`` logger, set up once.

Contract: ``configure(log_file=..., stdout_to_stderr=...)`` (the command line calls it once per
process; an order process calls it again with the same values) gives the ``lematt`` logger
its handlers and returns nothing; ``open_log_file`` checks and opens ``--log-file`` and raises
``OSError``; ``log_file_of()`` names the file set up (order processes get it passed on).
``lematt.report.Reporter`` writes through this logger; without ``configure`` it prints plain
lines itself (a library use, a unit test).

Line shapes per stream, decided for stdout and stderr separately (``LEMATT_LOG_FORMAT`` =
``plain``, ``timestamp`` or ``journal`` overrides the choice, ``auto`` or unset keeps it):

* the stream is the journal (``JOURNAL_STREAM`` holds its ``device:inode``, systemd.exec(5)):
  each line starts with its priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>``
  debug (sd-daemon(3)); the journal adds the time itself;
* a terminal: the message alone, as people read it;
* anything else (a pipe, a file, cron's mail): an ISO 8601 UTC timestamp, a space, the message.

Progress (``info``) and changes go to stdout, warnings and failures to stderr (both to stderr
when stdout carries ``--json -``). A record marked ``quiet`` (progress under ``--cron``) goes
to the log file only. The log file gets every record, timestamped, appended with one
``write`` per line on an ``O_APPEND`` descriptor, so lines of concurrent writers (order
processes) never interleave; it is created with mode 0640.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

LOGGER = "lematt"
LOG_FILE_MODE = 0o640
FORMATS = ("auto", "plain", "timestamp", "journal")
_PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


def _priority(level: int) -> int:
    for at_least, priority in _PRIORITIES:
        if level >= at_least:
            return priority
    return 7


def is_journal(stream: TextIO, journal_stream: str | None) -> bool:
    """Whether ``stream`` is the journal stream systemd named in JOURNAL_STREAM
    (``device:inode``, decimal): the variable alone is inherited by children whose output
    goes elsewhere, so the descriptor itself is compared."""
    if not journal_stream:
        return False
    device, _, inode = journal_stream.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def line_shape(stream: TextIO, environ: dict[str, str] | os._Environ[str]) -> str:
    """``plain``, ``timestamp`` or ``journal`` for lines written to ``stream``."""
    chosen = environ.get("LEMATT_LOG_FORMAT", "auto")
    if chosen in ("plain", "timestamp", "journal"):
        return chosen
    if is_journal(stream, environ.get("JOURNAL_STREAM")):
        return "journal"
    try:
        return "plain" if stream.isatty() else "timestamp"
    except (OSError, ValueError):
        return "timestamp"


def format_line(shape: str, record: logging.LogRecord) -> str:
    """The record as written: every line of a multi-line message (a command's output quoted
    under a failure) gets the prefix, so that none passes for a line of its own."""
    message = record.getMessage()
    if shape == "journal":
        prefix = f"<{_priority(record.levelno)}>"
    elif shape == "timestamp":
        prefix = f"{_timestamp(record.created)} "
    else:
        return message
    return "\n".join(prefix + line for line in message.split("\n"))


class _StreamsHandler(logging.Handler):
    """Warnings and failures to ``err``, the rest to ``out``, each in its stream's shape."""

    lematt_output = True  # lematt.report.Reporter writes through handlers so marked

    def __init__(self, out: TextIO, err: TextIO) -> None:
        super().__init__()
        self.out, self.err = out, err
        self.shapes = {id(out): line_shape(out, os.environ), id(err): line_shape(err, os.environ)}

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "quiet", False):
            return
        stream = self.err if record.levelno >= logging.WARNING else self.out
        try:
            stream.write(format_line(self.shapes[id(stream)], record) + "\n")
            stream.flush()
        except BrokenPipeError:
            raise  # the reader is gone (`lematt ... | head`): the caller decides, as for print
        except (OSError, ValueError):
            self.handleError(record)


class _FileHandler(logging.Handler):
    """Timestamped lines appended to an open ``O_APPEND`` descriptor, one write each."""

    lematt_output = True

    def __init__(self, path: Path, fd: int) -> None:
        super().__init__()
        self.path, self.fd = path, fd

    def emit(self, record: logging.LogRecord) -> None:
        line = format_line("timestamp", record) + "\n"
        try:
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        super().close()


def open_log_file(path: Path) -> int:
    """Open ``path`` for appending, creating it with mode 0640 (never the umask's); raises
    ``OSError`` (a missing directory: ``FileNotFoundError``)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, LOG_FILE_MODE)
        os.fchmod(fd, LOG_FILE_MODE)
        return fd
    except FileExistsError:
        return os.open(path, flags)


def configure(*, log_file: Path | None = None, log_fd: int | None = None,
              stdout_to_stderr: bool = False, out: TextIO | None = None,
              err: TextIO | None = None) -> None:
    """Give the ``lematt`` logger its handlers (replacing earlier ones)."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    err = err or sys.stderr
    out = err if stdout_to_stderr else (out or sys.stdout)
    logger.addHandler(_StreamsHandler(out, err))
    if log_file is not None:
        fd = log_fd if log_fd is not None else open_log_file(log_file)
        logger.addHandler(_FileHandler(log_file, fd))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def log_file_of() -> Path | None:
    """The log file ``configure`` set up, if any."""
    for handler in logging.getLogger(LOGGER).handlers:
        if isinstance(handler, _FileHandler):
            return handler.path
    return None
