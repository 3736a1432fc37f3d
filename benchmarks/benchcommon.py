"""What the benchmark scripts share: where the repository is, how lematt is run, CPU time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.rig / tests.sshd_rig / lematt from a checkout

CLK_TCK = os.sysconf("SC_CLK_TCK")


def lematt_env() -> dict[str, str]:
    """The environment for lematt runs: as a user's, with bytecode caching on (an installed
    lematt has compiled modules; recompiling them at every start would be measured too)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK
