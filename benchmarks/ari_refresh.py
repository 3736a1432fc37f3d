"""The cost of asking a CA for renewal info (RFC 9773): a cron run that refreshes N
certificates' renewalInfo against acme2certifier, against the same run with fresh info.

Starts a Pebble rig (only for its DNS, pebble-challtestsrv) and acme2certifier (ARI on),
issues N EC certificates with lematt (``challengeListen`` on 127.X.Y.60:80: run as root, as
the acme2certifier tests do), then times ``python -m lematt --test --cron`` three ways: with
fresh renewal info (nothing asked), after the kept info was made due again (N renewalInfo
requests, each CA answer a window that does not make anything due), and fresh again. lematt's
CPU comes from ``wait4``, acme2certifier's from /proc. Prints figures and one JSON line;
asserts nothing. Loopback only.

    python3 benchmarks/ari_refresh.py [--lines 300] [--port-offset 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import REPO, cpu_seconds, lematt_env

from lematt.testing.acme2certifier import start_acme2certifier
from lematt.testing.pebble import LOOPBACK, pebble_ports, start_pebble

LIFTED = {"*": 5000, "newOrder": 5000, "newNonce": 5000, "renewalInfo": 5000}


def timed(conf: Path, a2c_pid: int, *extra: str) -> dict[str, float]:
    ca0 = cpu_seconds(a2c_pid)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lematt", "--test", *extra, "--config",
                             str(conf)], cwd=REPO, env=lematt_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if status:
        print(out[-2000:], err[-2000:])
    return {"wall_s": round(wall, 3), "lematt_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "ca_cpu_s": round(cpu_seconds(a2c_pid) - ca0, 3), "exit": status >> 8}


def make_due(tree: Path, count: int) -> int:
    """The first ``count`` kept next-question moments set to the past (as the Retry-After
    running out does), the summary dropped so the run reads the rows; returns how many."""
    path = tree / ".renewal"
    lines = path.read_text().splitlines()
    out, touched = [], 0
    for line in lines:
        if line.startswith("@summary"):
            continue
        fields = line.split("\t")
        if len(fields) == 9 and touched < count:
            fields[4] = "1.0"
            touched += 1
        out.append("\t".join(fields))
    path.write_text("\n".join(out) + "\n")
    return touched


async def _keepalive_gets(directory_url: str, ca_bundle: Path, count: int) -> float:
    """lematt's CPU seconds for ``count`` unsigned GETs over kept-alive connections, 50 in
    flight (what a renewalInfo refresh does against a CA that keeps connections open), with
    a RenewalInfo body parsed and a window picked for each."""
    import resource

    import anyio

    from lematt import crypto
    from lematt.acme.client import AcmeClient
    from lematt.acme.limits import RequestRateLimiter
    from lematt.acme.messages import RenewalInfo
    from lematt.orders.renewal_info import _window

    body = {"suggestedWindow": {"start": "2030-01-02T04:00:00Z", "end": "2030-01-03T04:00:00Z"}}
    key = crypto.load_private_key(crypto.generate_private_pem("ec"), validate=False)
    limiter = RequestRateLimiter(LIFTED)
    async with AcmeClient.open(directory_url, key, ca_bundle=ca_bundle,
                               rate_limiter=limiter) as client:
        slots = anyio.CapacityLimiter(50)
        transport = client._t

        async def one() -> None:
            async with slots:
                await transport.unsigned("GET", directory_url, "probe")
            info = RenewalInfo.from_json(body, directory_url)
            _window(info.start, info.end, 2e9, None, None, lambda a, b: (a + b) / 2)

        before = resource.getrusage(resource.RUSAGE_SELF)
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)
        after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--port-offset", type=int, default=3000)
    ap.add_argument("--profile", action="store_true",
                    help="also run the refresh under cProfile and print where lematt's time goes")
    args = ap.parse_args()
    offset = args.port_offset
    listen = f"127.{(offset >> 8) & 0xFF}.{offset & 0xFF}.60"
    with tempfile.TemporaryDirectory(prefix="lematt-bench-ari-") as tmp:
        work = Path(tmp)
        pebble = start_pebble(work / "pebble", **pebble_ports(offset))
        try:
            a2c = start_acme2certifier(work / "a2c", port=14500 + offset,
                                       dns_server=(LOOPBACK, pebble.dns_port))
            try:
                conf_dir = work / "conf"
                conf_dir.mkdir()
                names = [f"site{i}.ari.bench" for i in range(args.lines)]
                for name in names:
                    pebble.add_a(name, listen)
                (conf_dir / "domains").write_text("".join(f"{n}\n" for n in names))
                conf = conf_dir / "lematt.conf"
                conf.write_text(
                    "[config]\naccountKey: account.key\nkeyTypes: ec\n"
                    f"directoryTest: {a2c.directory_url}\ncaBundle: {a2c.ca_bundle}\n"
                    f"challengeListen: {listen}:80\nrateLimits: {json.dumps(LIFTED)}\n")
                pid = a2c.pid()
                issue = timed(conf, pid)
                first_ask = timed(conf, pid, "--cron")  # every new certificate asked once
                fresh = timed(conf, pid, "--cron")
                small = make_due(conf_dir / "test", args.lines // 3)
                refresh_small = timed(conf, pid, "--cron")
                touched = make_due(conf_dir / "test", args.lines)
                refresh = timed(conf, pid, "--cron")
                fresh_again = timed(conf, pid, "--cron")
                if args.profile:
                    make_due(conf_dir / "test", args.lines)
                    stats = work / "refresh.prof"
                    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(stats), "-m",
                                    "lematt", "--test", "--cron", "--config", str(conf)],
                                   cwd=REPO, env=lematt_env(), check=False)
                    pstats.Stats(str(stats)).sort_stats("tottime").print_stats(25)
            finally:
                a2c.stop()
            import anyio

            probes = 2000
            keepalive_cpu = anyio.run(_keepalive_gets, pebble.directory_url, pebble.ca_bundle,
                                      probes)
        finally:
            pebble.stop()
    log = {"issue": issue, "first_ask": first_ask, "fresh": fresh,
           "refresh_small": refresh_small, "refresh": refresh, "fresh_again": fresh_again,
           "certificates": args.lines, "asked_small": small, "asked": touched}
    # The run's fixed cost of talking to the CA at all (imports, TLS, the directory) cancels
    # out between the two refreshes: what is left is the cost of one more request.
    n = max(touched - small, 1)
    per_request = {k: round((refresh[k] - refresh_small[k]) / n * 1000, 3)
                   for k in ("wall_s", "lematt_cpu_s", "ca_cpu_s")}
    fixed = {k: round(refresh_small[k] - fresh[k] - per_request[k] * small / 1000, 3)
             for k in ("wall_s", "lematt_cpu_s", "ca_cpu_s")}
    log["per_request_ms"], log["fixed_s"] = per_request, fixed
    for phase in ("issue", "first_ask", "fresh", "refresh_small", "refresh", "fresh_again"):
        print(f"{phase:14s} {log[phase]}")
    print(f"one more renewalInfo request: {per_request} ms; asking at all: {fixed} s")
    print("10,000 certificates: wall {:.1f} s, lematt CPU {:.1f} s, CA CPU {:.1f} s".format(
        *(fixed[k] + per_request[k] * 10 for k in ("wall_s", "lematt_cpu_s", "ca_cpu_s"))))
    # acme2certifier's server closes every connection (Connection: close), so each of its
    # requests above carried a TLS handshake; a CA that keeps connections open costs this:
    log["keepalive_request_ms"] = round(keepalive_cpu / probes * 1000, 3)
    print(f"one GET over a kept-alive connection (Pebble, {probes} of them, 50 in flight): "
          f"{log['keepalive_request_ms']} ms of lematt CPU; 10,000: "
          f"{fixed['lematt_cpu_s'] + keepalive_cpu / probes * 10000:.1f} s")
    print(json.dumps({"benchmark": "ari_refresh", **log}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
