"""``lematt status`` against the no-op cron run, on the same tree of 10,000 domains lines.

Builds (or reuses) ``benchmarks/noop.py``'s conf dir (an RSA and an EC certificate per line,
all current, no network), lets one no-op run fill the inventory index, then alternates, for
``--runs`` rounds: ``python -m lematt --prod --cron`` (the no-op cron run, which the quiet-run
memo usually ends at once), ``python -m lematt --prod`` (the same no-op run checking every
certificate, as status does), ``python -m lematt --prod status`` (the table) and ``python -m
lematt --prod status --json``, each timed from
process start to exit with its output read through a pipe. Prints every figure and the
medians of wall and CPU time; asserts nothing. ``--renewal-info`` first writes fresh
renewal state for every certificate, as for noop.py (status then reads every row of it).

    python3 benchmarks/status.py [--lines 10000] [--runs 5] [--workdir DIR] [--renewal-info]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import REPO, lematt_env
from noop import build, fresh_renewal_info


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(conf_dir: Path, *args: str) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, exit status, bytes of output) of one ``python -m
    lematt``. CPU time is what other load on a shared machine disturbs least."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lematt", "--prod", *args, "--config",
                           str(conf_dir / "lematt.conf")], cwd=REPO, env=lematt_env(),
                          capture_output=True, check=False, timeout=600)
    return (time.perf_counter() - start, _children_cpu() - cpu, proc.returncode,
            len(proc.stdout) + len(proc.stderr))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "lematt-bench-noop")
    ap.add_argument("--renewal-info", action="store_true",
                    help="write fresh renewal state for every certificate first")
    args = ap.parse_args()
    conf_dir = args.workdir / f"conf-{args.lines}"
    build(conf_dir, args.lines)
    if args.renewal_info:
        fresh_renewal_info(conf_dir)
    timed(conf_dir, "--cron")  # the index, as every later cron run finds it
    # "noop": the cron run, which the quiet-run memo usually ends at once; "noop_full": the
    # same run without --cron, which always checks every certificate (what status compares
    # with: both read the whole tree).
    kinds = {"noop": ("--cron",), "noop_full": (), "status": ("status",),
             "status_json": ("status", "--json")}
    walls: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpus: dict[str, list[float]] = {kind: [] for kind in kinds}
    for i in range(args.runs):
        for kind, extra in kinds.items():  # alternating: all see the same machine state
            wall, cpu, code, size = timed(conf_dir, *extra)
            walls[kind].append(wall)
            cpus[kind].append(cpu)
            print(f"round {i + 1} {kind}: {wall:.3f} s wall, {cpu:.3f} s CPU, exit {code}, "
                  f"output {size} bytes", flush=True)
    figures: dict[str, object] = {"benchmark": "status", "lines": args.lines,
                                  "certificates": 2 * args.lines,
                                  "renewal_info": args.renewal_info}
    for kind, values in walls.items():
        figures[f"{kind}_median_s"] = round(statistics.median(values), 3)
        figures[f"{kind}_min_s"] = round(min(values), 3)
        figures[f"{kind}_cpu_median_s"] = round(statistics.median(cpus[kind]), 3)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
