"""End to end against a second, independent CA: acme2certifier
(``lematt.testing.acme2certifier``).

It answers what Pebble answers differently: a known account key gets 200 with the body ``{}``,
challenges and finalize are answered synchronously, and it validates http-01 on port 80 of
the name's address (so lematt's ``challengeListen`` is on port 80 of 127.0.0.40, or of the
address ``port80_address`` gives for another port offset; the suite runs as root). Issue, a
quiet second run, a forced renewal with the same account key, and the same through two order
processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lematt.testing.acme2certifier import A2cRig
from lematt.testing.pebble import PebbleRig
from tests.e2e.conftest import MakeConf, RunLematt, port80_address
from tests.e2e.test_run import assert_pair, san, tree

# Port 80 is not moved by LEMATT_TEST_PORT_OFFSET: acme2certifier validates http-01 on port 80
# and nothing can change that; the address moves with the offset instead (port80_address).
LISTEN = port80_address(40)
NAMES = ("a2c-one.second.test", "a2c-two.second.test", "www.a2c-two.second.test",
         "a2c-p1.second.test", "a2c-p2.second.test", "a2c-p3.second.test")
TAGS = ("rsa2048", "prime256v1")


@pytest.fixture
def names_on_listen(pebble: PebbleRig) -> Iterator[None]:
    for name in NAMES:
        pebble.add_a(name, LISTEN)
    try:
        yield
    finally:
        for name in NAMES:
            pebble.clear_a(name)


def _conf(make_conf: MakeConf, tmp_path: Path, ca: A2cRig, domains: str) -> Path:
    return make_conf(tmp_path, domains, extra_conf={
        "directoryTest": ca.directory_url, "caBundle": ca.ca_bundle,
        "challengeListen": f"{LISTEN}:80", "challengeDropDir": None})


def _force_renewal(conf: Path) -> None:
    with conf.open("a") as fh:
        fh.write("reauthorizeDays = 36500\n")


def test_issue_rerun_and_forced_renewal_with_the_same_account(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, acme2certifier: A2cRig,
        names_on_listen: None) -> None:
    conf = _conf(make_conf, tmp_path, acme2certifier, "a2c-one.second.test\n"
                 "a2c-two.second.test www\n")
    stems = ("a2c-one.second.test", "a2c-two.second.test_www.a2c-two.second.test")
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 0, first.stderr
    t = tree(conf)
    certs = {}
    for stem in stems:
        for tag in TAGS:
            cert = t["cert"] / f"{stem}-cert-combined.{tag}.test.pem"
            assert_pair(t["key"] / f"{stem}-key.{tag}.test.pem", cert)
            certs[cert] = cert.read_bytes()
    assert san(t["cert"] / f"{stems[1]}-cert-combined.prime256v1.test.pem") == [
        "a2c-two.second.test", "www.a2c-two.second.test"]
    book = json.loads((conf.parent / "account.key.accounts.json").read_text())
    assert book["accounts"][acme2certifier.directory_url]["url"].startswith(
        acme2certifier.base_url)

    quiet = run_lematt("--test", "--cron", "--config", conf)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == quiet.stderr == ""

    # Every certificate due again, same account key: acme2certifier would answer a newAccount
    # for this key with 200 and "{}"; lematt uses the account URL it remembered.
    _force_renewal(conf)
    renewal = run_lematt("--test", "--config", conf)
    assert renewal.returncode == 0, renewal.stderr
    assert renewal.stdout.count("renewed") == 4
    for cert, before in certs.items():
        assert cert.read_bytes() != before
        key = t["key"] / cert.name.replace("-cert-combined.", "-key.")
        assert_pair(key, cert)

    # Without the remembered URL the account is found again through newAccount (200, "{}").
    (conf.parent / "account.key.accounts.json").unlink()
    again = run_lematt("--test", "--config", conf)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("renewed") == 4


def test_two_order_processes_renew_against_the_second_ca(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, acme2certifier: A2cRig,
        names_on_listen: None) -> None:
    domains = "a2c-p1.second.test\na2c-p2.second.test\na2c-p3.second.test\n"
    conf = _conf(make_conf, tmp_path, acme2certifier, domains)
    first = run_lematt("--test", "--config", conf, "--processes", "2")
    assert first.returncode == 0, first.stderr
    _force_renewal(conf)
    second = run_lematt("--test", "--config", conf, "--processes", "2")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("renewed") == 6
    t = tree(conf)
    for n in (1, 2, 3):
        for tag in TAGS:
            assert_pair(t["key"] / f"a2c-p{n}.second.test-key.{tag}.test.pem",
                        t["cert"] / f"a2c-p{n}.second.test-cert-combined.{tag}.test.pem")
