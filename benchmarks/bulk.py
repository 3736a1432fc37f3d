"""Bulk issuance against a local Pebble: how long N domains lines (RSA + EC each) take.

Prints a table and one JSON line per run; asserts nothing. Each run gets a fresh Pebble (its
state is in memory and it can stall under heavy load) and a fresh conf dir, and runs
``python -m lematt --test --parallel P`` exactly as a user would. Loopback only.

    python3 benchmarks/bulk.py --lines 100 --parallel 1 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.rig import start_pebble  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def one_run(lines: int, parallel: int, key_types: str, timeout: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="lematt-bench-") as tmp:
        work = Path(tmp)
        with start_pebble(work / "pebble") as pebble:
            conf_dir = work / "conf"
            conf_dir.mkdir()
            (conf_dir / "domains").write_text(
                "".join(f"site{i}.bulk.test www\n" for i in range(lines)))
            (conf_dir / "lematt.conf").write_text(
                "[config]\n"
                f"directoryTest: {pebble.directory_url}\n"
                f"caBundle: {pebble.ca_bundle}\n"
                "accountKey: account.key\n"
                f"keyTypes: {key_types}\n"
                f"challengeListen: 127.0.0.1:{pebble.http_port}\n")
            pebble_cpu0 = cpu_seconds(pebble.pebble_pid())
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "lematt", "--test", "--cron", "--parallel", str(parallel),
                 "--config", str(conf_dir / "lematt.conf")],
                cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
            wall = time.monotonic() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            pebble_cpu = cpu_seconds(pebble.pebble_pid()) - pebble_cpu0
            certs = len(list((conf_dir / "test" / "cert").glob("*_*-cert-combined.*")))
    lematt_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    expected = lines * len(key_types.split())
    return {
        "lines": lines, "key_types": key_types, "parallel": parallel, "certificates": certs,
        "failed": expected - certs, "exit": proc.returncode, "wall_s": round(wall, 2),
        "certs_per_s": round(certs / wall, 2) if wall else None,
        "lematt_cpu_s": round(lematt_cpu, 2), "pebble_cpu_s": round(pebble_cpu, 2),
        "lematt_cpu_ms_per_cert": round(1000 * lematt_cpu / certs, 1) if certs else None,
        "cores_busy": round((lematt_cpu + pebble_cpu) / (wall * (os.cpu_count() or 1)), 2),
        "peak_rss_mib": round(after.ru_maxrss / 1024, 1),
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[100])
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--key-types", default="rsa ec")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    header = f"{'lines':>5} {'keys':>7} {'par':>4} {'certs':>5} {'fail':>4} {'wall s':>7} " \
             f"{'cert/s':>7} {'cpu ms/cert':>11} {'pebble cpu':>10} {'busy':>5}"
    print(header)
    for lines in args.lines:
        for parallel in args.parallel:
            r = one_run(lines, parallel, args.key_types, args.timeout)
            print(f"{r['lines']:>5} {r['key_types']:>7} {r['parallel']:>4} "
                  f"{r['certificates']:>5} {r['failed']:>4} {r['wall_s']:>7} "
                  f"{r['certs_per_s']:>7} {r['lematt_cpu_ms_per_cert']!s:>11} "
                  f"{r['pebble_cpu_s']:>10} {r['cores_busy']:>5}", flush=True)
            print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
