"""Bulk issuance against a local Pebble: N domains lines x key types, at several --parallel.

Each run gets a fresh Pebble (its state is in memory, and Pebble 2.4 can deadlock under heavy
concurrency) and a fresh conf dir, and runs ``python -m lematt --test --parallel P`` exactly as
a user would. Progress is watched: if no certificate appears for ``--stall-seconds`` the run
is stopped and reported as a stalled CA. Prints a table and one JSON line per run; asserts
nothing. Loopback only, on ports offset by ``--port-offset`` so the test suite can run beside.

    python3 benchmarks/bulk.py --lines 50 200 500 --keys ec rsa "rsa ec" --parallel 1 10 50
    python3 benchmarks/bulk.py --lines 200 --keys ec --parallel 10 --profile   # where time goes
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchcommon import REPO, cpu_seconds, lematt_env

from lematt.testing.pebble import PebbleRig, pebble_ports, start_pebble

# Let's Encrypt's per-endpoint limits (lematt's defaults) would cap a local Pebble at about
# 25 certificates/s; this CA is ours, so the benchmark lifts them unless --le-limits.
LIFTED_LIMITS = {"*": 5000, "newOrder": 5000, "newNonce": 5000}



def ca_answers(pebble: PebbleRig) -> bool:
    """Does the CA still answer a directory request within 5 s?"""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=pebble.ssl_context()))
    try:
        with opener.open(pebble.directory_url, timeout=5) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


def dump_goroutines(pebble: PebbleRig) -> Path:
    """Make the stalled Pebble print its goroutine stacks (Go does that on SIGQUIT, then
    exits) and keep its log, which then holds them, beyond the run's temp dir."""
    os.kill(pebble.pebble_pid(), signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pebble.pebble_alive():
        time.sleep(0.1)  # bounded: Go writes the dump and exits within milliseconds
    kept = Path(tempfile.gettempdir()) / f"lematt-bench-pebble-stall-{os.getpid()}.log"
    shutil.copyfile(pebble.pebble_log, kept)
    return kept


def write_conf(conf_dir: Path, lines: int, key_types: str, pebble: object,
               rate_limits: dict[str, int] | None) -> Path:
    conf_dir.mkdir()
    (conf_dir / "domains").write_text("".join(f"site{i}.bulk.test www\n" for i in range(lines)))
    conf = conf_dir / "lematt.conf"
    conf.write_text(
        "[config]\n"
        f"directoryTest: {pebble.directory_url}\n"  # type: ignore[attr-defined]
        f"caBundle: {pebble.ca_bundle}\n"  # type: ignore[attr-defined]
        "accountKey: account.key\n"
        f"keyTypes: {key_types}\n"
        f"challengeListen: 127.0.0.1:{pebble.http_port}\n"  # type: ignore[attr-defined]
        + (f"rateLimits: {json.dumps(rate_limits)}\n" if rate_limits else ""))
    return conf


def stored_since(certs_dir: Path, since_ns: int) -> int:
    """Certificates written at or after ``since_ns`` (0: all there are)."""
    if not certs_dir.is_dir():
        return 0
    return sum(1 for path in certs_dir.glob("*_*-cert-combined.*")
               if since_ns == 0 or path.stat().st_mtime_ns >= since_ns)


def one_run(lines: int, parallel: int, key_types: str, args: argparse.Namespace,
            work: Path) -> list[dict[str, object]]:
    """One fresh Pebble: the issuing run, and with ``--renew`` a second run in which every
    certificate is due again (same account, same files: a mass renewal)."""
    with start_pebble(work / "pebble", **pebble_ports(args.port_offset)) as pebble:
        conf = write_conf(work / "conf", lines, key_types, pebble,
                          None if args.le_limits else LIFTED_LIMITS)
        results = [measure("issue", conf, pebble, lines, parallel, key_types, args, work)]
        if args.renew and not results[0]["stalled_ca"]:
            with conf.open("a") as fh:
                # Due when it expires within 100 years: every certificate, however new.
                fh.write("reauthorizeDays: 36500\n")
            results.append(
                measure("renew", conf, pebble, lines, parallel, key_types, args, work))
    return results


def measure(phase: str, conf: Path, pebble: PebbleRig, lines: int, parallel: int,
            key_types: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    certs_dir = conf.parent / "test" / "cert"
    profile = work / f"lematt-{phase}.prof"
    argv = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if args.profile else []),
            "-m", "lematt", "--test", "--cron", "--parallel", str(parallel),
            "--processes", str(args.processes), "--config", str(conf)]
    pebble_cpu0 = cpu_seconds(pebble.pebble_pid())
    since_ns = time.time_ns() if phase == "renew" else 0
    start = time.monotonic()
    errors = work / f"stderr-{phase}.txt"
    with errors.open("w") as err_file:
        proc = subprocess.Popen(argv, cwd=REPO, env=lematt_env(),
                                stdout=subprocess.DEVNULL, stderr=err_file)
    stalled, seen, last_change = False, -1, start
    pebble_cpu_at_stall = 0.0
    usage = None
    while usage is None:
        # wait4, not wait: lematt's own CPU time and peak RSS, not the whole tree's.
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            usage, proc.returncode = rusage, os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.25)  # progress check interval; ends with lematt or the stall
        done = stored_since(certs_dir, since_ns)
        if done != seen:
            seen, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > args.stall_seconds and not stalled:
            stalled = True
            # Pebble 2.4's deadlock leaves the directory answering while every handler
            # that touches its store hangs; lematt's stderr then shows the timeouts.
            state = ("its directory still answers; see lematt's per-request timeouts "
                     "below" if ca_answers(pebble) else "it does not answer at all")
            print(f"  no certificate for {args.stall_seconds:.0f} s: CA stalled? "
                  f"{state}; stopping lematt (SIGTERM)", flush=True)
            proc.terminate()
            pebble_cpu_at_stall = cpu_seconds(pebble.pebble_pid())
            print(f"  Pebble's goroutines: {dump_goroutines(pebble)}", flush=True)
    err = errors.read_text()
    wall = time.monotonic() - start
    pebble_cpu = (pebble_cpu_at_stall if stalled else cpu_seconds(pebble.pebble_pid())
                  ) - pebble_cpu0
    certs = stored_since(certs_dir, since_ns)
    if args.profile and profile.exists():
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(25)
    lematt_cpu = usage.ru_utime + usage.ru_stime
    expected = lines * len(key_types.split())
    return {
        "phase": phase, "processes": args.processes,
        "lines": lines, "key_types": key_types, "parallel": parallel, "certificates": certs,
        "failed": expected - certs, "exit": proc.returncode, "stalled_ca": stalled,
        "wall_s": round(wall, 2), "certs_per_s": round(certs / wall, 2) if wall else None,
        "lematt_cpu_s": round(lematt_cpu, 2), "lematt_user_s": round(usage.ru_utime, 2),
        "lematt_sys_s": round(usage.ru_stime, 2), "pebble_cpu_s": round(pebble_cpu, 2),
        "lematt_cpu_ms_per_cert": round(1000 * lematt_cpu / certs, 1) if certs else None,
        "pebble_cpu_ms_per_cert": round(1000 * pebble_cpu / certs, 1) if certs else None,
        "cores_busy": round((lematt_cpu + pebble_cpu) / (wall * (os.cpu_count() or 1)), 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stderr_tail": err.strip().splitlines()[-3:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[100])
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--keys", nargs="+", default=["rsa ec"],
                    help='key type sets, e.g. ec rsa "rsa ec"')
    ap.add_argument("--stall-seconds", type=float, default=60)
    ap.add_argument("--port-offset", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="run lematt under cProfile")
    ap.add_argument("--le-limits", action="store_true",
                    help="keep lematt's default (Let's Encrypt) request-rate limits")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration")
    ap.add_argument("--processes", type=int, default=1,
                    help="lematt's --processes (order processes; --parallel is split)")
    ap.add_argument("--renew", action="store_true",
                    help="after issuing, run again with every certificate due (mass renewal)")
    ap.add_argument("--retries", type=int, default=2,
                    help="fresh-Pebble reruns of a run whose CA stalled")
    args = ap.parse_args()
    # Every run's conf dir stays until the benchmark exits: deleting thousands of files
    # between runs would slow the next run's file creation (on ext4 without a journal, each
    # new inode is checked against those freed in the last ~30 s), measuring the harness
    # instead of lematt. For the same reason, leave half a minute between invocations.
    with tempfile.TemporaryDirectory(prefix="lematt-bench-") as tmp:
        return run_all(args, Path(tmp))


def run_all(args: argparse.Namespace, tmp: Path) -> int:
    print(f"{'phase':>5} {'lines':>5} {'keys':>7} {'par':>4} {'certs':>5} {'fail':>4} "
          f"{'wall s':>7} "
          f"{'cert/s':>7} {'ms cpu/cert':>11} {'pebble ms':>9} {'busy':>5} {'rss MiB':>7}",
          flush=True)
    run_numbers = itertools.count()
    for key_types in args.keys:
        for lines in args.lines:
            for parallel, _ in itertools.product(args.parallel, range(args.repeat)):
                stalls = 0
                while True:
                    work = tmp / f"run{next(run_numbers)}"
                    work.mkdir()
                    results = one_run(lines, parallel, key_types, args, work)
                    if not any(r["stalled_ca"] for r in results) or stalls >= args.retries:
                        break
                    stalls += 1
                    print(f"  the CA stalled (Pebble 2.4 deadlock): run again with a fresh "
                          f"Pebble ({stalls}/{args.retries})", flush=True)
                for r in results:
                    r["stalls_before"] = stalls
                    stall = "  STALLED CA" if r["stalled_ca"] else ""
                    print(f"{r['phase']:>5} {r['lines']:>5} {r['key_types']:>7} "
                          f"{r['parallel']:>4} {r['certificates']:>5} {r['failed']:>4} "
                          f"{r['wall_s']:>7} {r['certs_per_s']!s:>7} "
                          f"{r['lematt_cpu_ms_per_cert']!s:>11} "
                          f"{r['pebble_cpu_ms_per_cert']!s:>9} {r['cores_busy']:>5} "
                          f"{r['peak_rss_mib']:>7}{stall}", flush=True)
                    print(json.dumps({"benchmark": "bulk", **r}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
