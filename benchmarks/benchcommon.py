"""What the benchmark scripts share: where the repository is, how lematt is run, CPU time.

The benchmarks import lematt and its rigs (``lematt.testing``) as an installed package
(``pip install -e .`` in the checkout, as the quick start does) and nothing from ``tests/``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the working directory of the lematt runs

CLK_TCK = os.sysconf("SC_CLK_TCK")


def lematt_env() -> dict[str, str]:
    """The environment for lematt runs: as a user's, with bytecode caching on (an installed
    lematt has compiled modules; recompiling them at every start would be measured too)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK
