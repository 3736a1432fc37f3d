"""Drop-in parity: the original lematt (2018) and lematt on the same config, one real Pebble.

The original is read from ``../shared/reference/original-lematt`` beside the repository (or
``$LEMATT_ORIGINAL``) and run as a throwaway copy with the few changes it needs to talk to a
local Pebble 2.4 (that directory's README lists them): its staging URL, SANs also for one
name, an RSA account key, ``SSL_CERT_FILE`` for Pebble's TLS and ``http_proxy`` for its own
pre-check of the token file. Nothing of it is copied into the project.

Compared: the file tree (names, symlinks, modes), the names in each certificate, the sections
each certificate reaches and what ``CERTS``/``KEYS``/``DOMAINS_*`` expand to (as sets of
files, relative to each conf dir), the prepare commands, second runs (nothing due) and exit
codes; then each program's second run on the other's tree. Every difference that remains is
listed in the README ("Coming from the original lematt").

One difference of layout is compared by what it resolves to: where the original has a
regular key or certificate file under an upstream name, lematt has a link through its
pair's pointer in ``.pairs`` (the key and certificate switch together) to a regular file of
that same name; such a name counts as that file (kind, mode, and the basename it resolves
to, which must be the upstream name). Likewise ``CERTS``/``KEYS``: the original's shell glob
lists ``<tree>/cert/<name>``, lematt names the real file ``<tree>/.pairs/<version>/<name>``
(what ``rsync -a`` then copies as a file); both are compared as ``<tree>/cert/<name>``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lematt.testing.pebble import PebbleRig, StaticChallengeServer, start_pebble
from tests.e2e.conftest import PORT_OFFSET, REPO_ROOT, RunLematt

ORIGINAL = Path(os.environ.get("LEMATT_ORIGINAL", REPO_ROOT.parent / "shared" / "reference"
                               / "original-lematt"))
ORIGINAL_TIMEOUT = 300.0
# A Pebble of its own: the original's acme_tiny answers every challenge of an order, also one
# that is already valid, which Pebble refuses when it reuses an authorization (its default for
# half the orders), so this Pebble reuses none (PEBBLE_AUTHZREUSE=0). Lematt skips valid ones.
PARITY_PEBBLE_PORTS = {"acme_port": 14700, "management_port": 15700, "http_port": 5702,
                       "tls_port": 5701, "dns_port": 8753, "challtestsrv_port": 8755}

DOMAINS = "pa.parity.test www\npb.parity.test\npc.parity.test pc.other.test\n"
# Each action records what it was given; the shell expands the CERTS/KEYS globs.
ACTIONS = """\
[default]
prepare: ["touch {out}/prepared-default-DOMAIN"]
uploadCerts: ["ls -d CERTS >> {out}/default-certs"]
uploadKeys: ["ls -d KEYS >> {out}/default-keys"]
update: ["echo DOMAINS_CN >> {out}/default-update"]

[every]
update: ["echo DOMAINS_ALL >> {out}/every-update"]

[override-other]
domains: pc.other.test
prepare: ["touch {out}/prepared-other-DOMAIN"]
uploadCerts: ["ls -d CERTS >> {out}/other-certs"]
update: ["echo DOMAINS_CN >> {out}/other-update"]
"""


def _original_copy(work: Path, pebble: PebbleRig) -> Path:
    """A throwaway copy of the original, patched as the reference README says."""
    if not (ORIGINAL / "lematt.py").is_file():
        pytest.fail(f"the original lematt is not at {ORIGINAL}: put the reference checkout "
                    "there or point LEMATT_ORIGINAL at it", pytrace=False)
    copy = work / "original"
    copy.mkdir()
    for name in ("lematt.py", "acme_tiny.py"):
        shutil.copy(ORIGINAL / name, copy / name)
    source = (copy / "lematt.py").read_text()
    source, staging = re.subn(r'STAGING = "[^"]*"', f'STAGING = "{pebble.directory_url}"',
                              source)
    source, san = re.subn(r"useSAN = len\(domains\) > 1", "useSAN = True", source)
    assert staging == 1 and san == 1, "the original lematt changed; update this test's patch"
    (copy / "lematt.py").write_text(source)
    return copy


def _conf(conf: Path, out: Path, drop: Path, pebble: PebbleRig) -> Path:
    conf.mkdir()
    out.mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = conf / "account.key"
    account.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    account.chmod(0o600)
    (conf / "lematt.conf").write_text(
        "[config]\nreauthorizeDays: 60\ngenerateNewCertsAfterDays: 0\n"
        f"challengeDropDir: {drop}/\nalwaysGenerateNewKeys: no\naccountKey: {account}\n"
        "keyBitsRSA: 2048\ncurve: prime256v1\n"
        # lematt's own keys (the original ignores keys it does not know):
        f"directoryTest: {pebble.directory_url}\ncaBundle: {pebble.ca_bundle}\n")
    (conf / "domains").write_text(DOMAINS)
    (conf / "actions.conf").write_text(ACTIONS.format(out=out))
    # The original fetches this intermediate with wget when it is missing.
    (conf / "lets-encrypt-x3-cross-signed.pem").write_text("")
    return conf / "lematt.conf"


def _run_original(copy: Path, config: Path, pebble: PebbleRig, drop_port: int,
                  *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    env.update({"SSL_CERT_FILE": str(pebble.ca_bundle),
                "http_proxy": f"http://127.0.0.1:{drop_port}", "no_proxy": ""})
    return subprocess.run([sys.executable, str(copy / "lematt.py"), "--test", "--config",
                           str(config), *args], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=ORIGINAL_TIMEOUT, stdin=subprocess.DEVNULL)


def _tree(conf: Path) -> dict[str, str]:
    """Every entry of the test tree: 'link -> target', 'file 0600', 'dir 0700'."""
    root = conf.parent / "test"
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("."):
            continue  # lematt's own .staging/.journal/.inventory
        if path.is_symlink():
            target = os.readlink(path)
            if target.startswith("../.pairs/"):
                # lematt's upstream name: a link through the pair's pointer to a regular file
                # of the same name, compared as that file.
                real = path.resolve(strict=True)
                assert real.is_file() and real.name == path.name, (rel, real)
                found[rel] = f"file {stat.S_IMODE(real.stat().st_mode):04o}"
            else:
                found[rel] = f"-> {target}"
        else:
            kind = "dir" if path.is_dir() else "file"
            found[rel] = f"{kind} {stat.S_IMODE(path.stat().st_mode):04o}"
    return found


def _names(conf: Path) -> dict[str, list[str]]:
    certs = {}
    for path in sorted((conf.parent / "test" / "cert").glob("*-cert-combined.*.pem")):
        if path.is_symlink() and not os.readlink(path).startswith("../.pairs/"):
            continue  # a per-name link (lematt's upstream names link through .pairs)
        leaf = x509.load_pem_x509_certificate(path.read_bytes())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        certs[path.name] = sorted(san.value.get_values_for_type(x509.DNSName))
    return certs


def _records(out: Path, conf: Path) -> dict[str, list[str]]:
    """What each action wrote, paths relative to the conf dir, as sorted sets."""
    base = str(conf.parent)
    records = {}
    for path in sorted(out.iterdir()):
        words = path.read_text().split() if path.is_file() else []
        records[path.name] = sorted({_as_upstream(w.replace(base, "<conf>")) for w in words})
    return records


def _as_upstream(word: str) -> str:
    """A real file lematt named in CERTS/KEYS (``<conf>/test/.pairs/<version>/<name>``) as
    the upstream name it stands for (``<conf>/test/{cert,key}/<name>``)."""
    found = re.fullmatch(r"(<conf>/test)/\.pairs/[^/]+\+[0-9a-f]+/([^/]+)", word)
    if found is None:
        return word
    where = "cert" if "-cert-combined." in found[2] else "key"
    return f"{found[1]}/{where}/{found[2]}"


@dataclass(frozen=True)
class ParityCA:
    pebble: PebbleRig
    drop_dir: Path  # served at http-01 by a static server on 127.0.0.1:<http_port>


@pytest.fixture(scope="module")
def parity_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParityCA]:
    ports = {name: port + PORT_OFFSET for name, port in PARITY_PEBBLE_PORTS.items()}
    rig = start_pebble(tmp_path_factory.mktemp("pebble-parity"),
                       extra_env={"PEBBLE_AUTHZREUSE": "0"}, **ports)
    drop = tmp_path_factory.mktemp("parity-drop")
    try:
        with StaticChallengeServer(drop, "127.0.0.1", rig.http_port):
            yield ParityCA(rig, drop)
    finally:
        rig.stop()


def test_the_original_and_lematt_make_the_same_tree_and_run_the_same_actions(
        tmp_path: Path, parity_ca: ParityCA, run_lematt: RunLematt) -> None:
    pebble, drop = parity_ca.pebble, parity_ca.drop_dir
    port = pebble.http_port
    copy = _original_copy(tmp_path, pebble)
    conf_o = _conf(tmp_path / "conf-original", tmp_path / "out-original", drop, pebble)
    conf_l = _conf(tmp_path / "conf-lematt", tmp_path / "out-lematt", drop, pebble)

    # The original orders a line's RSA and EC certificates at the same time; now and then
    # one of them finds its challenge already validated by the other's and gives up
    # ("FAILED FOR DOMAIN"), as it would against Let's Encrypt. Its next run orders what is
    # missing; one more run is allowed for that.
    for _ in range(2):
        original = _run_original(copy, conf_o, pebble, port)
        assert original.returncode == 0, original.stdout + original.stderr
        if "FAILED" not in original.stdout:
            break
    assert "FAILED" not in original.stdout, original.stdout
    ours = run_lematt("--test", "--config", conf_l)
    assert ours.returncode == 0, ours.stderr

    # One difference on purpose (README, "Coming from the original lematt"): lematt creates
    # key/ 0700 where the original's mkdir left it to the umask (0755 here).
    tree_o, tree_l = _tree(conf_o), _tree(conf_l)
    assert (tree_o.pop("key"), tree_l.pop("key")) == ("dir 0755", "dir 0700")
    assert tree_o == tree_l
    assert _names(conf_o) == _names(conf_l)
    assert len(_names(conf_l)) == 6  # three lines, RSA and EC
    # Sections per name: pc.other.test's override, and [default] for pc.parity.test, pa, pb.
    records_o, records_l = _records(tmp_path / "out-original", conf_o), _records(
        tmp_path / "out-lematt", conf_l)
    assert records_o == records_l
    assert records_l["other-update"] == ["pc.parity.test"]
    assert records_l["default-update"] == ["pa.parity.test", "pb.parity.test", "pc.parity.test"]
    assert "prepared-other-pc.other.test" in records_l
    assert "prepared-default-pc.parity.test" in records_l
    for path in (conf_l.parent / "test" / "key").iterdir():
        # Every key lematt shows (through its link into .pairs, or a per-name link) is 0600.
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # Second runs, and each program's second run on the other's tree: nothing is due.
    for conf in (conf_o, conf_l):
        quiet = run_lematt("--test", "--cron", "--config", conf)
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
        if conf is conf_l:
            assert quiet.stdout == ""
        else:
            # The original left key/ to the umask (0755): lematt takes other users' access
            # away, once, says so, and keeps any group access.
            assert quiet.stdout.splitlines() == [
                f"[TEST] {conf.parent}/test/key: removed other users' access "
                "(mode 0755 -> 0750); group access, if any, is kept"]
        again = _run_original(copy, conf, pebble, port, "--cron")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "renew" not in again.stdout.lower(), again.stdout
    assert {k: v for k, v in _tree(conf_o).items() if k != "key"} == {
        k: v for k, v in _tree(conf_l).items() if k != "key"}
