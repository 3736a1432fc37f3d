"""Demo: lematt's main job against a local Pebble CA on loopback, started and stopped here.

It starts Pebble (with pebble-challtestsrv as its DNS, so every example name resolves to
127.0.0.1) on free loopback ports, writes a conf dir under ./demo-run/ that uses the example
``conf/domains`` and lematt's built-in challenge server (``challengeListen``), runs ``python -m
lematt --test`` twice - the first run issues RSA and EC certificates for every line, the second
finds them current - prints where the files are, and stops Pebble again. lematt must be
importable (scripts/demo.sh installs it into .venv).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lematt.testing.pebble import free_pebble_ports, start_pebble

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    run_dir = REPO / "demo-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    shutil.copy(REPO / "conf" / "domains", run_dir / "domains")
    with tempfile.TemporaryDirectory(prefix="lematt-demo-pebble-") as work:
        # Free ports, not Pebble's usual 14000 and friends: a test suite or another Pebble
        # on this machine may hold those.
        ports = free_pebble_ports()
        print(f"starting a local Pebble CA on 127.0.0.1:{ports['acme_port']} ...", flush=True)
        with start_pebble(Path(work), **ports) as pebble:
            (run_dir / "lematt.conf").write_text(
                "[config]\n"
                f"directoryTest: {pebble.directory_url}\n"
                f"caBundle: {pebble.ca_bundle}\n"
                "accountKey: account.key\n"
                f"challengeListen: 127.0.0.1:{pebble.http_port}\n"
            )
            for attempt in ("first run", "second run (nothing due)"):
                print(f"\n$ python -m lematt --test --config demo-run/lematt.conf   # {attempt}",
                      flush=True)
                result = subprocess.run(
                    [sys.executable, "-m", "lematt", "--test", "--config",
                     str(run_dir / "lematt.conf")], cwd=REPO, timeout=600, check=False)
                if result.returncode != 0:
                    print(f"lematt exited {result.returncode}", file=sys.stderr)
                    return result.returncode
    print("\ncertificates:", *sorted(p.name for p in (run_dir / "test" / "cert").iterdir()),
          sep="\n  ")
    print(f"\nkeys are in {run_dir / 'test' / 'key'}, certificates in "
          f"{run_dir / 'test' / 'cert'}. Pebble has been stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
