"""End to end against acme2certifier, the CA in the suite that offers ARI (RFC 9773), profiles
(draft-ietf-acme-profiles) and external account binding.

* A bulk renewal of 60 lines: one renewalInfo request per certificate and no more within its
  Retry-After; only the certificates whose window has come are renewed, each newOrder naming
  the certificate it replaces; then the new ones are asked about once, and a cron run is quiet.
* A CA that refuses ``replaces`` (409 alreadyReplaced) gets the order again without it.
* Renewal info that cannot be used (not JSON, a window that ends before it starts, one after
  expiry, a hostile explanation URL) changes nothing: the fallback decides; a run killed while
  it asks is completed by the next one.
* Profiles: sent in newOrder, shown in the JSON summary, validated against the directory (exit
  2 listing what the CA offers), per actions section, and a change of profile renews.
* External account binding: exit 2 without it, registration with it, and the account found
  again (200 with ``{}``) when its remembered URL is lost.

acme2certifier builds its URLs from ``server_name``: pointed at ``tests.ca_front``, every
request passes the front, which counts them (and, where a test says so, answers instead).
The renewal windows of certificates lematt holds are moved by editing the CA's own SQLite
record of when they were issued and expire: acme2certifier computes windows from those, and
no CA ages a certificate on request.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lematt.testing.acme2certifier import A2cRig, start_acme2certifier
from lematt.testing.pebble import LOOPBACK, PebbleRig
from tests.ca_front import CaFront, Reply, Request, directory_path
from tests.e2e.conftest import PORT_OFFSET, REPO_ROOT, RunLematt, port80_address, write_conf
from tests.e2e.test_run import assert_pair, tree

ARI_PORT, EAB_PORT, FRONT_PORT = (p + PORT_OFFSET for p in (14660, 14670, 14690))
PROFILES = {"classic": "the usual", "shortlived": "about a week"}
RENEWAL_INFO = "/acme/renewal-info/"


@pytest.fixture(scope="module")
def ari(pebble: PebbleRig, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[A2cRig, CaFront]]:
    """acme2certifier with ARI (its default) and two profiles, behind a counting front."""
    workdir = tmp_path_factory.mktemp("a2c-ari")
    rig = start_acme2certifier(workdir, port=ARI_PORT, dns_server=(LOOPBACK, pebble.dns_port),
                               profiles=PROFILES, extra_config={
                                   "DEFAULT": {"server_name": f"{LOOPBACK}:{FRONT_PORT}"}})
    front = CaFront(rig.directory_url, rig.ca_bundle, workdir / "front", port=FRONT_PORT)
    try:
        with front:
            yield rig, front
    finally:
        rig.stop()


@pytest.fixture
def counted(ari: tuple[A2cRig, CaFront]) -> Iterator[CaFront]:
    """The front, its counts and rules cleared before and after the test."""
    _, front = ari

    def clear() -> None:
        with front.lock:
            front.requests.clear()
            front.answered.clear()
            front.rules.clear()
            front.after.clear()

    clear()
    yield front
    clear()


def names_at(pebble: PebbleRig, address: str, names: list[str]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for name in names:
        pebble.add_a(name, address)
        stack.callback(pebble.clear_a, name)
    return stack


def conf_for(tmp_path: Path, front: CaFront, host: int, domains: str, **extra: Any) -> Path:
    return write_conf(tmp_path, {
        "accountKey": tmp_path / "account.key", "directoryTest": front.directory_url,
        "caBundle": front.ca_bundle, "challengeListen": f"{port80_address(host)}:80",
        "keyTypes": "ec", **extra}, domains)


def renewal_gets(front: CaFront) -> list[str]:
    with front.lock:
        return [path for method, path in front.requests
                if method == "GET" and path.startswith(RENEWAL_INFO)]


def record_orders(front: CaFront) -> list[dict[str, Any]]:
    """Every newOrder payload the CA answered from now on."""
    payloads: list[dict[str, Any]] = []

    def after(front: CaFront, request: Request, reply: Reply) -> None:
        if (request.method == "POST" and request.path == directory_path(front, "newOrder")
                and reply.status < 400):
            payloads.append(request.jws()[1])

    front.after.append(after)
    return payloads


def age_at_the_ca(rig: A2cRig, cert_paths: list[Path]) -> None:
    """Make the CA's record say these certificates were issued 400 days ago and expired 35
    days ago, so their renewal windows have ended (acme2certifier computes the window from
    issue_uts and expire_uts)."""
    wanted = {x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(
        serialization.Encoding.DER) for p in cert_paths}
    now = int(time.time())
    with contextlib.closing(sqlite3.connect(rig.workdir / "acme_srv.db", timeout=30)) as db:
        rows = db.execute("SELECT id, cert_raw FROM certificate").fetchall()
        ids = [row_id for row_id, raw in rows if raw and base64.b64decode(raw) in wanted]
        assert len(ids) == len(wanted)
        db.executemany("UPDATE certificate SET issue_uts = ?, expire_uts = ? WHERE id = ?",
                       [(now - 400 * 86400, now - 35 * 86400, i) for i in ids])
        db.commit()


# More lines than renewalInfo requests lematt sends at once (orders.renewal_info.CONCURRENCY);
# more only make the suite slower (200 took 80 s against acme2certifier).
BULK = 60  # > CONCURRENCY (50)


def test_bulk_renewal_follows_the_window_and_names_what_it_replaces(
        tmp_path: Path, pebble: PebbleRig, ari: tuple[A2cRig, CaFront], counted: CaFront,
        run_lematt: RunLematt) -> None:
    rig, front = ari
    names = [f"bulk{i}.ari.test" for i in range(BULK)]
    conf = conf_for(tmp_path, front, 41, "".join(f"{n}\n" for n in names))
    certs = [tree(conf)["cert"] / f"{n}-cert-combined.prime256v1.test.pem" for n in names]
    with names_at(pebble, port80_address(41), names):
        first = run_lematt("--test", "--config", conf)
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("renewed") == BULK
        assert renewal_gets(front) == []  # nothing stored yet: nothing to ask about

        # The CA moved the windows of half of them into the past (the rest: 85 % of a year).
        aged = certs[::2]
        before = {p: p.read_bytes() for p in certs}
        age_at_the_ca(rig, aged)
        orders = record_orders(front)
        counted.requests.clear()
        second = run_lematt("--test", "--config", conf)
        assert second.returncode == 0, second.stderr
        gets = renewal_gets(front)
        assert len(gets) == len(set(gets)) == BULK  # one per certificate
        assert second.stdout.count("renewed") == BULK // 2
        assert second.stdout.count("past the CA's renewal window") == BULK // 2
        for path in certs:
            assert (path.read_bytes() != before[path]) == (path in aged)
        # Each renewal named the certificate it replaces (RFC 9773 section 5).
        aged_ids = {_cert_id(before[p]) for p in aged}
        assert len(orders) == BULK // 2 and {o.get("replaces") for o in orders} == aged_ids

        counted.requests.clear()
        third = run_lematt("--test", "--cron", "--config", conf)
        assert (third.returncode, third.stdout, third.stderr) == (0, "", "")
        # Only the BULK // 2 new certificates are asked about (soon after issuance); the others'
        # Retry-After (86400 s) has not passed.
        new_ids = {_cert_id(p.read_bytes()) for p in aged}
        assert {g.removeprefix(RENEWAL_INFO) for g in renewal_gets(front)} == new_ids

        counted.requests.clear()
        fourth = run_lematt("--test", "--cron", "--config", conf)
        assert (fourth.returncode, fourth.stdout, fourth.stderr) == (0, "", "")
        assert front.requests == []  # fresh renewal info: not even the directory


def _cert_id(pem: bytes) -> str:
    from lematt import crypto

    return crypto.read_certificate(pem).cert_id


def test_a_refused_replaces_is_dropped_and_the_order_sent_again(
        tmp_path: Path, pebble: PebbleRig, ari: tuple[A2cRig, CaFront], counted: CaFront,
        run_lematt: RunLematt) -> None:
    rig, front = ari
    conf = conf_for(tmp_path, front, 42, "refused.ari.test\n")
    cert = tree(conf)["cert"] / "refused.ari.test-cert-combined.prime256v1.test.pem"
    refusals: list[dict[str, Any]] = []

    def refuse(front: CaFront, request: Request) -> Reply | None:
        if request.method == "POST" and request.path == directory_path(front, "newOrder"):
            payload = request.jws()[1]
            if "replaces" in payload:
                refusals.append(payload)
                problem = {"type": "urn:ietf:params:acme:error:alreadyReplaced",
                           "detail": "the certificate was already replaced", "status": 409}
                return Reply(409, {"Content-Type": "application/problem+json"},
                             json.dumps(problem).encode())
        return None

    with names_at(pebble, port80_address(42), ["refused.ari.test"]):
        assert run_lematt("--test", "--config", conf).returncode == 0
        age_at_the_ca(rig, [cert])
        counted.rules.append(refuse)
        orders = record_orders(front)
        again = run_lematt("--test", "--config", conf)
    assert again.returncode == 0, again.stderr
    assert "renewed refused.ari.test (EC)" in again.stdout
    assert len(refusals) == 1 and len(orders) == 1 and "replaces" not in orders[0]


@pytest.mark.parametrize(("body", "headers"), [
    (b"<html>busy</html>", {"Content-Type": "text/html"}),
    # Ends before it starts: RFC 9773 section 4.2 says treat it as no answer.
    (b'{"suggestedWindow": {"start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"}}',
     {"Content-Type": "application/json"}),
    # Starts after the certificate expires, with a hostile explanation URL and Retry-After.
    (b'{"suggestedWindow": {"start": "2099-01-01T00:00:00Z", "end": "2099-01-02T00:00:00Z"},'
     b' "explanationURL": "https://x.test/\\u001b[31mred"}',
     {"Content-Type": "application/json", "Retry-After": "99999999999"}),
], ids=["not-json", "ends-before-start", "after-expiry"])
def test_unusable_renewal_info_leaves_the_fallback_in_charge(
        tmp_path: Path, pebble: PebbleRig, ari: tuple[A2cRig, CaFront], counted: CaFront,
        run_lematt: RunLematt, body: bytes, headers: dict[str, str]) -> None:
    _, front = ari
    conf = conf_for(tmp_path, front, 43, "odd.ari.test\n")

    def answer(front: CaFront, request: Request) -> Reply | None:
        if request.method == "GET" and request.path.startswith(RENEWAL_INFO):
            return Reply(200, headers, body)
        return None

    with names_at(pebble, port80_address(43), ["odd.ari.test"]):
        assert run_lematt("--test", "--config", conf).returncode == 0
        counted.rules.append(answer)
        result = run_lematt("--test", "--config", conf)
    assert result.returncode == 0, result.stderr
    assert "renewal info unavailable for 1 certificate(s)" in result.stdout
    assert "\x1b" not in result.stdout + result.stderr
    assert "renewed" not in result.stdout and "nothing to do" in result.stdout
    rows = (tree(conf)["cert"].parent / ".renewal").read_text().splitlines()
    (row,) = [r for r in rows if r.startswith("odd.ari.test")]
    next_check = float(row.split("\t")[4])
    # Asked again after 6 hours (the error path), not after the hostile Retry-After.
    assert 5 * 3600 < next_check - time.time() <= 6 * 3600


def test_a_run_killed_while_asking_is_completed_by_the_next(
        tmp_path: Path, pebble: PebbleRig, ari: tuple[A2cRig, CaFront], counted: CaFront,
        run_lematt: RunLematt) -> None:
    _, front = ari
    lines = [f"kill{i}.ari.test" for i in range(3)]
    conf = conf_for(tmp_path, front, 44, "".join(f"{n}\n" for n in lines))
    reached, release = threading.Event(), threading.Event()

    def hold(front: CaFront, request: Request) -> Reply | None:
        if request.method == "GET" and request.path.startswith(RENEWAL_INFO):
            reached.set()
            release.wait(60)
            return Reply(503)
        return None

    with names_at(pebble, port80_address(44), lines):
        assert run_lematt("--test", "--config", conf).returncode == 0
        counted.rules.append(hold)
        proc = subprocess.Popen([sys.executable, "-m", "lematt", "--test", "--config",
                                 str(conf)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            assert reached.wait(120)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            release.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        counted.rules.clear()
        counted.requests.clear()
        after = run_lematt("--test", "--config", conf)
        assert after.returncode == 0, after.stderr
        assert len(renewal_gets(front)) == 3
        assert "renewal info: asked the CA about 3 certificate(s)" in after.stdout
        quiet = run_lematt("--test", "--cron", "--config", conf)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


# --------------------------------------------------------------------------- profiles


def test_profiles_are_sent_validated_shown_and_a_change_renews(
        tmp_path: Path, pebble: PebbleRig, ari: tuple[A2cRig, CaFront], counted: CaFront,
        run_lematt: RunLematt) -> None:
    _, front = ari
    domains = "prof.ari.test\nmail.prof.ari.test\n"
    names = ["prof.ari.test", "mail.prof.ari.test"]
    actions = "[override-mail]\ndomains: mail.prof.ari.test\nprofile: classic\n"
    (tmp_path / "actions.conf").write_text(actions)

    unknown = conf_for(tmp_path, front, 45, domains, profile="tlsserver")
    orders = record_orders(front)
    bad = run_lematt("--test", "--config", unknown)
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith(f"lematt: {unknown.resolve()}:7: profile 'tlsserver' is not a "
                           "profile of the CA at")
    assert "(it offers classic, shortlived)" in line
    assert orders == []

    conf = conf_for(tmp_path, front, 45, domains, profile="shortlived")
    summary = tmp_path / "summary.json"
    with names_at(pebble, port80_address(45), names):
        first = run_lematt("--test", "--config", conf, "--json", summary)
        assert first.returncode == 0, first.stderr
        assert sorted(o["profile"] for o in orders) == ["classic", "shortlived"]
        shown = {c["names"][0]: c["profile"] for c in json.loads(summary.read_text())[
            "certificates"]}
        assert shown == {"prof.ari.test": "shortlived", "mail.prof.ari.test": "classic"}
        quiet = run_lematt("--test", "--cron", "--config", conf)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")

        # The mail section moves to shortlived: only that certificate is due.
        (tmp_path / "actions.conf").write_text(actions.replace("classic", "shortlived"))
        orders.clear()
        changed = run_lematt("--test", "--config", conf)
        assert changed.returncode == 0, changed.stderr
        assert "due: mail.prof.ari.test (EC): profile changed (classic -> shortlived)" in (
            changed.stdout)
        assert changed.stdout.count("renewed") == 1
        assert [o["profile"] for o in orders] == ["shortlived"]
    assert_pair(tree(conf)["key"] / "mail.prof.ari.test-key.prime256v1.test.pem",
                tree(conf)["cert"] / "mail.prof.ari.test-cert-combined.prime256v1.test.pem")


# --------------------------------------------------------------------------- EAB


@pytest.fixture(scope="module")
def eab_a2c(pebble: PebbleRig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[A2cRig]:
    rig = start_acme2certifier(tmp_path_factory.mktemp("a2c-eab"), port=EAB_PORT,
                               dns_server=(LOOPBACK, pebble.dns_port), eab=True)
    try:
        yield rig
    finally:
        rig.stop()


def test_external_account_binding_and_account_reuse(
        tmp_path: Path, pebble: PebbleRig, eab_a2c: A2cRig, run_lematt: RunLematt) -> None:
    def conf(**extra: Any) -> Path:
        return write_conf(tmp_path, {
            "accountKey": tmp_path / "account.key", "directoryTest": eab_a2c.directory_url,
            "caBundle": eab_a2c.ca_bundle, "challengeListen": f"{port80_address(46)}:80",
            "keyTypes": "ec", **extra}, "eab.a2c.test\n")

    missing = run_lematt("--test", "--config", conf())
    assert missing.returncode == 2
    assert "requires external account binding: set eabKid" in missing.stderr
    assert eab_a2c.eab_kid and eab_a2c.eab_hmac_key
    good = conf(eabKid=eab_a2c.eab_kid, eabHmacKey=eab_a2c.eab_hmac_key)
    with names_at(pebble, port80_address(46), ["eab.a2c.test"]):
        first = run_lematt("--test", "--config", good)
        assert first.returncode == 0, first.stderr
        assert "registered the ACME account key" in first.stdout
        url = json.loads((tmp_path / "account.key.accounts.json").read_text())[
            "accounts"][eab_a2c.directory_url]["url"]
        # The remembered URL lost: newAccount for the known key answers 200 with "{}";
        # lematt reads the account and carries on with the same one.
        (tmp_path / "account.key.accounts.json").unlink()
        with good.open("a") as fh:
            fh.write("reauthorizeDays = 36500\n")
        again = run_lematt("--test", "--config", good)
        assert again.returncode == 0, again.stderr
        assert "renewed eab.a2c.test (EC)" in again.stdout
        assert json.loads((tmp_path / "account.key.accounts.json").read_text())[
            "accounts"][eab_a2c.directory_url]["url"] == url


def test_a_ca_that_does_not_answer_is_asked_again_an_hour_later(
        tmp_path: Path, pebble: PebbleRig, ari: tuple[A2cRig, CaFront], counted: CaFront,
        run_lematt: RunLematt) -> None:
    """A CA that is down must not cost every cron run a request (or its timeout): the
    certificates it was to be asked about wait an hour, judged by what was kept."""
    _, front = ari
    conf = conf_for(tmp_path, front, 47, "down.ari.test\n")

    def down(front: CaFront, request: Request) -> Reply | None:
        return Reply(503, {"Retry-After": "3600"})

    with names_at(pebble, port80_address(47), ["down.ari.test"]):
        assert run_lematt("--test", "--config", conf).returncode == 0
    counted.rules.append(down)
    counted.requests.clear()
    first = run_lematt("--test", "--cron", "--config", conf)
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    assert len(front.requests) == 1  # the directory, refused
    counted.requests.clear()
    second = run_lematt("--test", "--cron", "--config", conf)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    assert front.requests == []
