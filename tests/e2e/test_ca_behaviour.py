"""End to end: CA behaviour that Pebble 2.4 does not show by itself, made real by a front.

* Order reuse: a CA may hand an account's still pending or ready order back to a second
  newOrder for the same identifiers (RFC 8555 section 7.4; Let's Encrypt's Boulder does).
  Pebble never does, so ``tests.ca_front.reuse_orders`` does it in front of the real Pebble.
* The account URL: lematt remembers it beside the account key and sends no newAccount when
  it knows it; the front counts the newAccount requests that reach the CA.
* A run-wide error found before anything changed (a real Pebble that requires external
  account binding, none configured): one line, exit 2, and the ``--json`` summary written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lematt.testing.pebble import PebbleRig, start_pebble
from tests.ca_front import CaFront, directory_path, reuse_orders
from tests.e2e.conftest import PORT_OFFSET, ChallengeDrop, MakeConf, RunLematt
from tests.e2e.test_run import assert_pair, tree

FRONT_PORT = 14300 + PORT_OFFSET
EAB_PEBBLE_PORTS = {"acme_port": 14400, "management_port": 15400, "http_port": 5402,
                    "tls_port": 5401, "dns_port": 8453, "challtestsrv_port": 8455}
TAGS = ("rsa2048", "prime256v1")
EAB_HMAC_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"  # base64url


@pytest.fixture
def front_factory(pebble: PebbleRig, tmp_path: Path) -> Iterator[type[CaFront]]:
    fronts: list[CaFront] = []

    class Front(CaFront):
        def __init__(self, **kw: object) -> None:
            super().__init__(pebble.directory_url, pebble.ca_bundle, tmp_path / "front",
                             port=FRONT_PORT, **kw)  # type: ignore[arg-type]
            fronts.append(self)

    yield Front
    for front in fronts:
        front.__exit__(None, None, None)


def _front_conf(make_conf: MakeConf, tmp_path: Path, front: CaFront, domains: str,
                **extra: object) -> Path:
    return make_conf(tmp_path, domains, extra_conf={
        "directoryTest": front.directory_url, "caBundle": front.ca_bundle, **extra})


def test_a_ca_that_hands_back_open_orders_still_gets_every_certificate(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        front_factory: type[CaFront]) -> None:
    rule, after = reuse_orders()
    with front_factory(rules=[rule], after=[after]) as front:
        domains = "reuse1.ca.test www\nreuse2.ca.test\nreuse3.ca.test mail smtp\n"
        conf = _front_conf(make_conf, tmp_path, front, domains)
        result = run_lematt("--test", "--config", conf, "--parallel", "10")
        assert result.returncode == 0, result.stderr
        t = tree(conf)
        stems = ("reuse1.ca.test_www.reuse1.ca.test", "reuse2.ca.test",
                 "reuse3.ca.test_mail.reuse3.ca.test_smtp.reuse3.ca.test")
        for stem in stems:
            for tag in TAGS:
                assert_pair(t["key"] / f"{stem}-key.{tag}.test.pem",
                            t["cert"] / f"{stem}-cert-combined.{tag}.test.pem")
        # Each line's key types were ordered one after the other: a second newOrder for the
        # same names never arrived while the first order was open, so none was handed back.
        assert front.state.get("reused", 0) == 0
        assert front.state["created"] == 6  # (a badNonce retry may send one twice)


def _book(conf: Path) -> dict[str, dict[str, str]]:
    path = conf.parent / "account.key.accounts.json"
    return json.loads(path.read_text())["accounts"]


def test_the_account_url_is_remembered_and_a_forgotten_account_registered_again(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        front_factory: type[CaFront]) -> None:
    with front_factory() as front:
        new_account = directory_path(front, "newAccount")
        conf = _front_conf(make_conf, tmp_path, front, "account.ca.test\n", keyTypes="ec")
        first = run_lematt("--test", "--config", conf)
        assert first.returncode == 0, first.stderr
        assert front.count("POST", new_account) == 1
        book = _book(conf)
        url = book[front.directory_url]["url"]
        assert url.startswith(front.origin)

        # A forced renewal with the same key: no newAccount at all.
        with conf.open("a") as fh:
            fh.write("reauthorizeDays = 36500\n")
        second = run_lematt("--test", "--config", conf)
        assert second.returncode == 0, second.stderr
        assert "renewed" in second.stdout
        assert front.count("POST", new_account) == 1

        # The CA forgot the account (a URL it never issued, on its own prefix): the first
        # signed request says accountDoesNotExist; lematt registers once and carries on.
        forgotten = url.rsplit("/", 1)[0] + "/999999"
        path = conf.parent / "account.key.accounts.json"
        data = json.loads(path.read_text())
        data["accounts"][front.directory_url]["url"] = forgotten
        path.write_text(json.dumps(data))
        third = run_lematt("--test", "--config", conf)
        assert third.returncode == 0, third.stderr
        assert front.count("POST", new_account) == 2
        assert _book(conf)[front.directory_url]["url"] == url


def test_order_processes_register_no_account_of_their_own(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        front_factory: type[CaFront]) -> None:
    with front_factory() as front:
        conf = _front_conf(make_conf, tmp_path, front,
                           "p1.ca.test\np2.ca.test\np3.ca.test\np4.ca.test\n", keyTypes="ec")
        result = run_lematt("--test", "--config", conf, "--processes", "2")
        assert result.returncode == 0, result.stderr
        assert front.count("POST", directory_path(front, "newAccount")) == 1
        for n in range(1, 5):
            stem = f"p{n}.ca.test"
            assert_pair(tree(conf)["key"] / f"{stem}-key.prime256v1.test.pem",
                        tree(conf)["cert"] / f"{stem}-cert-combined.prime256v1.test.pem")


@pytest.fixture(scope="module")
def eab_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleRig]:
    """A second real Pebble that requires external account binding (RFC 8555 7.3.4)."""
    ports = {name: port + PORT_OFFSET for name, port in EAB_PEBBLE_PORTS.items()}
    rig = start_pebble(tmp_path_factory.mktemp("pebble-eab"), extra_config={
        "externalAccountBindingRequired": True,
        "externalAccountMACKeys": {"kid-1": EAB_HMAC_KEY},
    }, **ports)
    try:
        yield rig
    finally:
        rig.stop()


def test_an_account_error_is_one_line_and_the_summary_is_written(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        eab_pebble: PebbleRig, challenge_server: ChallengeDrop) -> None:
    conf = make_conf(tmp_path, "eab.ca.test\n", extra_conf={
        "directoryTest": eab_pebble.directory_url, "caBundle": eab_pebble.ca_bundle})
    summary = tmp_path / "summary.json"
    result = run_lematt("--test", "--config", conf, "--json", summary)
    # The directory says externalAccountRequired and lematt.conf has no eabKid: a config
    # error, found before any request that could change anything.
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"lematt: {conf.resolve()}: the CA at ")
    assert "requires external account binding: set eabKid" in lines[0]
    data = json.loads(summary.read_text())
    assert data["ok"] is False
    assert data["failure"]["kind"] == "config"
    assert not (conf.parent / "account.key.accounts.json").exists()
