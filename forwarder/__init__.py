"""forwarder: the stdlib-only http-01 redirector that lematt starts on remote hosts over SSH.

The program itself is the single file ``leforward.py`` (see its docstring for the CLI and exit
statuses). This package adds what lematt needs to run it remotely without installing anything:

``program_bytes()``
    The exact bytes of ``leforward.py``.
``remote_command(args, python="python3") -> (command, stdin_prefix)``
    ``command`` is one shell command line (every word quoted) for ``ssh DEST command``;
    ``stdin_prefix`` is what to write to that command's stdin first. The remote Python reads
    exactly ``len(stdin_prefix)`` bytes, runs them as leforward with ``args`` as its arguments,
    and from then on the same stdin is the forwarder's lifeline: keep it open while the forwarder
    is needed, close it (EOF) to stop it.

Like ``leforward.py``, this package must keep importing on Python 3.8 with the standard library
only, because ``python3 -m forwarder`` runs it on the remote hosts too.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from .leforward import (
    EXIT_BIND,
    EXIT_OK,
    EXIT_USAGE,
    READY_PREFIX,
    main,
    parse_ready_line,
)

__all__ = [
    "EXIT_BIND",
    "EXIT_OK",
    "EXIT_USAGE",
    "READY_PREFIX",
    "bootstrap_code",
    "main",
    "parse_ready_line",
    "program_bytes",
    "remote_command",
]

PROGRAM_PATH = Path(__file__).resolve().with_name("leforward.py")


def program_bytes() -> bytes:
    """The forwarder program, byte for byte as it is in this package."""
    return PROGRAM_PATH.read_bytes()


def bootstrap_code(length: int) -> str:
    """One line of Python for ``python3 -c`` that runs the next ``length`` stdin bytes as leforward.

    It reads exactly ``length`` bytes (no more is consumed on purpose: the rest of stdin is left
    for the forwarder's end-of-file watch), exits 2 with a message if stdin ends first, then execs
    the program as ``__main__`` with ``sys.argv[1:]`` unchanged. Deliberately free of quotes,
    backslashes and ``!`` so that it survives any remote login shell once quoted.
    """
    return (
        "import sys;"
        f"b=sys.stdin.buffer.read({length});"
        f"len(b)=={length} or [sys.stderr.write("
        f"\"leforward: expected {length} program bytes on stdin, got \"+str(len(b))+chr(10)),"
        "sys.exit(2)];"
        "sys.argv[0]=\"leforward\";"
        "exec(compile(b,\"leforward\",\"exec\"),{\"__name__\":\"__main__\"})"
    )


def remote_command(args: Sequence[str], *, python: str = "python3") -> tuple[str, bytes]:
    """(shell command, bytes to write to its stdin first) to run leforward with ``args``.

    ``python -I`` (isolated mode) keeps PYTHON* variables and the user's site directory on the
    remote host from changing what runs. Every word is shlex-quoted, so ``args`` may hold any
    value; leforward itself validates them and exits 2 on a usage error.
    """
    program = program_bytes()
    words = [python, "-I", "-c", bootstrap_code(len(program)), *args]
    return shlex.join(words), program
