"""Fan-out: one run deploying to 20 SSH hosts at once (sshd on 127.0.0.10-29).

Each host receives the certificates and keys of the renewed lines over SFTP and runs one
reload command (``sleep 0.1``, standing in for a service reload). Prints the deploy's wall
time next to the sum and the maximum of the per-host times (from ``--json``); with hosts in
parallel the wall time should be close to the slowest host, not to the sum. Asserts nothing.

    python3 benchmarks/fanout.py [--hosts 20] [--lines 5] [--port-offset N]

``--port-offset N`` moves Pebble's ports and the sshd port (2222) by N, as the test suite's
LEMATT_TEST_PORT_OFFSET does, so the benchmark can run beside a suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchcommon import REPO, lematt_env

from lematt.testing.pebble import pebble_ports, start_pebble
from lematt.testing.sshd import ClientKit, start_sshd

SSHD_PORT = 2222


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--lines", type=int, default=5)
    ap.add_argument("--port-offset", type=int, default=0,
                    help="added to Pebble's ports and to the sshd port")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lematt-fanout-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        kit = ClientKit.create(work / "client")
        pebble = stack.enter_context(start_pebble(work / "pebble",
                                                  **pebble_ports(args.port_offset)))
        uploads, keys, updates = [], [], []
        for i in range(args.hosts):
            address = f"127.0.0.{10 + i}"
            rig = stack.enter_context(start_sshd(work / f"sshd-{i}", address,
                                                 SSHD_PORT + args.port_offset,
                                                 authorized_keys=[kit.public_line]))
            kit.add_known_host(address, rig.port, rig.host_key)
            alias = kit.add_alias(f"h{i}", address, rig.port)
            target = work / f"remote-{i}"
            target.mkdir()
            uploads.append({"ssh": alias, "to": str(target)})
            keys.append({"ssh": alias, "to": str(target), "mode": "0600"})
            updates.append({"ssh": alias, "run": "sleep 0.1"})
        conf = work / "conf"
        conf.mkdir()
        (conf / "domains").write_text(
            "".join(f"site{i}.fanout.test www\n" for i in range(args.lines)))
        (conf / "lematt.conf").write_text(
            "[config]\n"
            f"directoryTest: {pebble.directory_url}\ncaBundle: {pebble.ca_bundle}\n"
            "accountKey: account.key\nkeyTypes: ec\n"
            f"challengeListen: 127.0.0.1:{pebble.http_port}\nsshConfig: {kit.ssh_config}\n")
        (conf / "actions.conf").write_text(
            "[default]\n"
            f"uploadCerts: {json.dumps(uploads)}\nuploadKeys: {json.dumps(keys)}\n"
            f"update: {json.dumps(updates)}\n")
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "lematt", "--test", "--cron", "--config",
             str(conf / "lematt.conf"), "--json", str(work / "run.json")],
            cwd=REPO, env=lematt_env(), capture_output=True, text=True, timeout=900, check=False)
        run_wall = time.monotonic() - start
        summary = json.loads((work / "run.json").read_text())
    hosts = summary["deploy"]["hosts_s"]
    failed = sum(1 for a in summary["actions"] if not a["ok"])
    print(f"hosts {len(hosts)}  lines {args.lines}  exit {proc.returncode}  failed steps {failed}")
    print(f"run wall {run_wall:.2f} s   deploy wall {summary['deploy']['wall_s']:.2f} s")
    print(f"per-host sum {sum(hosts.values()):.2f} s   slowest host {max(hosts.values()):.2f} s"
          f"   wall/slowest {summary['deploy']['wall_s'] / max(hosts.values()):.2f}")
    print(json.dumps({"hosts": len(hosts), "lines": args.lines, "exit": proc.returncode,
                      "failed_steps": failed, "run_wall_s": round(run_wall, 2),
                      "deploy_wall_s": summary["deploy"]["wall_s"],
                      "host_sum_s": round(sum(hosts.values()), 2),
                      "host_max_s": round(max(hosts.values()), 2)}))
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
