"""No-op cron run: 10,000 domains lines whose certificates are all present and current.

Builds (once, cached in the work dir) a conf dir in the original layout with an RSA and an
EC certificate per line, issued by a local throwaway CA (no CA is asked for 20,000
certificates), then times ``python -m lematt --prod --cron`` from process start to exit,
several times. The first run after building may fill lematt's inventory cache; the figures
that matter are the steady-state runs. Prints figures; asserts nothing. No network at all.
``--renewal-info`` first writes fresh renewal state for every certificate (as a run against
a CA with ARI leaves it: the CA's facts read now, a window a month ahead, the next question
hours away), so the run reads and judges it but asks the CA nothing.

With ``--original DIR`` (a checkout of the original lematt, e.g.
../shared/reference/original-lematt) each run of lematt is followed by a run of the original
``lematt.py --prod --cron`` on the same tree, and both medians and their ratio are printed.
The conf dir carries the settings the original needs (it reads them all unconditionally).

    python3 benchmarks/noop.py [--lines 10000] [--runs 5] [--workdir DIR] [--renewal-info]
                               [--original DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchcommon import REPO, lematt_env

from lematt import config as config_mod
from lematt import crypto
from lematt.model import CertState, KeyType, RenewalWindow
from lematt.store.inventory import scan
from lematt.store.renewal import CaFacts, RenewalBook, index_identity
from lematt.store.tree import Store
from lematt.testing.certs import LocalCA


def build(conf_dir: Path, lines: int) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    # Written every time (cheap): a tree built by an older version of this script gets them.
    (conf_dir / "lematt.conf").write_text(
        # Absolute: the original resolves it against its working directory.
        f"[config]\naccountKey: {conf_dir.resolve()}/account.key\nchallengeDropDir: drop\n"
        "directoryProd: https://127.0.0.1:9/dir\n"
        # The original reads all of these, whatever their value:
        "reauthorizeDays: 15\ngenerateNewCertsAfterDays: 0\nkeyBitsRSA: 2048\n"
        "curve: prime256v1\nalwaysGenerateNewKeys: no\n")
    # The original wants [default] (and reads [every]), an account key file that exists,
    # and this intermediate (it fetches a missing one with wget). A no-op run reads none.
    (conf_dir / "actions.conf").write_text("[default]\n[every]\n")
    (conf_dir / "account.key").write_text("")
    (conf_dir / "lets-encrypt-x3-cross-signed.pem").write_text("")
    marker = conf_dir / ".built"
    if marker.exists() and marker.read_text() == str(lines):
        return
    (conf_dir / "domains").write_text(
        "".join(f"site{i}.noop.test www\n" for i in range(lines)))
    config = config_mod.load(conf_dir / "lematt.conf")
    store = Store(config.settings, test=False)
    store.ensure_dirs()
    ca = LocalCA()
    now = datetime.now(UTC)
    # One key per type, shared: building 10,000 RSA keys would take longer than the benchmark.
    keys = {kt: crypto.load_private_key(crypto.generate_private_pem(kt)) for kt in ("rsa", "ec")}
    for line in config.lines:
        for kt in ("rsa", "ec"):
            key = keys[kt]
            chain = ca.issue(key, line.names, now - timedelta(days=1), now + timedelta(days=89))
            csr = crypto.csr_pem(crypto.make_csr(keys["ec"], line.names))
            store.commit(line, kt, key_pem=crypto.private_key_pem(key), csr_pem=csr,
                         chain_pem=chain)
    marker.write_text(str(lines))


def fresh_renewal_info(conf_dir: Path) -> None:
    """Renewal state as a run against a CA with renewalInfo leaves it, for every certificate."""
    config = config_mod.load(conf_dir / "lematt.conf")
    settings = config.settings
    store = Store(settings, test=False)
    names: dict[tuple[int, KeyType], str] = {}
    found = scan(store, config.lines, settings.key_types, names)
    book = RenewalBook(store.root)
    now = time.time()
    book.set_ca(CaFacts(settings.directory_prod, now, renewal_info=True))
    for key, name in names.items():
        cert = found[key].cert
        assert cert is not None and cert.cert_id, "certificates without an AKI: rebuild"
        window = RenewalWindow(now + 30 * 86400, now + 40 * 86400, now + 35 * 86400)
        book.put(name, CertState(cert.cert_id, "", window, now + 6 * 3600))
    book.save(index=index_identity(store.root), complete=True)


def timed_run(conf_dir: Path, original: Path | None = None) -> tuple[float, int, str, float]:
    """One no-op run of lematt (or, with ``original``, of the original lematt.py)."""
    program = ([str(original / "lematt.py")] if original is not None else ["-m", "lematt"])
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *program, "--prod", "--cron", "--config",
                           str(conf_dir / "lematt.conf")],
                          cwd=original if original is not None else REPO, env=lematt_env(),
                          capture_output=True, text=True, check=False, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, proc.returncode, proc.stdout + proc.stderr, after.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "lematt-bench-noop")
    ap.add_argument("--original", type=Path, metavar="DIR",
                    help="also time the original lematt.py in DIR on the same tree")
    ap.add_argument("--renewal-info", action="store_true",
                    help="write fresh renewal state for every certificate first")
    args = ap.parse_args()
    conf_dir = args.workdir / f"conf-{args.lines}"
    t0 = time.perf_counter()
    build(conf_dir, args.lines)
    if args.renewal_info:
        fresh_renewal_info(conf_dir)
    print(f"conf dir with {args.lines} lines ready in {time.perf_counter() - t0:.1f} s "
          f"({conf_dir})", flush=True)
    # Forget any inventory cache so the first run shows the cold cost (with renewal info the
    # index stays: the state was matched against it, as a run against the CA leaves it).
    for cache in conf_dir.glob("prod/.inventory*") if not args.renewal_info else ():
        cache.unlink()
    walls: list[float] = []
    originals: list[float] = []
    for i in range(args.runs):
        wall, code, output, rss = timed_run(conf_dir)
        walls.append(wall)
        print(f"run {i + 1}: {wall:.3f} s wall, exit {code}, output {len(output)} bytes, "
              f"peak RSS {rss:.0f} MiB", flush=True)
        if code or output:
            print(output[-2000:])
        if args.original is not None:
            # Alternating, so both see the same machine state.
            wall, code, output, _ = timed_run(conf_dir, args.original)
            originals.append(wall)
            print(f"  original: {wall:.3f} s wall, exit {code}", flush=True)
            if code:
                print(output[-2000:])
    steady = walls[1:] or walls
    figures: dict[str, object] = {
        "benchmark": "noop", "lines": args.lines, "certificates": 2 * args.lines,
        "renewal_info": args.renewal_info,
        "first_run_s": round(walls[0], 3), "steady_median_s": round(statistics.median(steady), 3),
        "steady_min_s": round(min(steady), 3), "cpus": os.cpu_count()}
    if originals:
        median = statistics.median(originals)
        figures.update(original_median_s=round(median, 3),
                       speedup=round(median / statistics.median(steady), 1))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
