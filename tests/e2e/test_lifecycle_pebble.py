"""End to end against real Pebbles: the certificate lifecycle beyond issuing.

* Short lifetimes (Pebble's ``certificateValidityPeriod``): a 6-day certificate is not renewed
  at every run (the fallback is half its lifetime), and an explicit ``reauthorizeDays`` that
  would renew at every run is a warning naming the line.
* Alternate chains (``PEBBLE_ALTERNATE_ROOTS``): ``preferredChain`` picks the chain whose top
  certificate was issued by that root; an unknown name keeps the default chain.
* External account binding (a Pebble with ``externalAccountBindingRequired``): missing is
  exit 2 naming what to set, a wrong key is the CA's refusal in one line, the right one
  registers (also from a file, and again when the remembered URL was lost).
* Terms of service: ``agreeTermsOfService: no`` is exit 2 naming the terms; agreeing is shown.
* ``lematt revoke``: the CA revokes (Pebble's management API says so), the pair is due at the
  next run with a new key; a CA that refuses leaves the pair alone; a kill while the CA
  answers still renews it.
* ``lematt account show | update-contact | rollover | deactivate``; a rollover killed before
  or after the CA applied it is settled by the next run.

The kills use ``tests.ca_front`` in front of the real Pebble, holding one request: no other
way stops lematt at exactly that instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from lematt import crypto
from lematt.acme.jws import thumbprint
from lematt.testing.pebble import PebbleRig, _no_proxy_opener, start_pebble
from tests.ca_front import CaFront, Reply, Request, directory_path
from tests.e2e.conftest import PORT_OFFSET, REPO_ROOT, RunLematt, write_conf
from tests.e2e.test_run import assert_pair, tree

SIX_DAYS = 6 * 86400
HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"  # base64url


def _ports(n: int) -> dict[str, int]:
    """The ports of this module's Pebble ``n`` (0, 1), away from the suite's others."""
    base = {"acme_port": 14610, "management_port": 15610, "http_port": 5612, "tls_port": 5611,
            "dns_port": 8613, "challtestsrv_port": 8615}
    return {name: port + 10 * n + PORT_OFFSET for name, port in base.items()}


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleRig]:
    """A Pebble issuing 6-day certificates with two alternate chains."""
    rig = start_pebble(tmp_path_factory.mktemp("pebble-life"), **_ports(0),
                       cert_validity_seconds=SIX_DAYS,
                       extra_env={"PEBBLE_ALTERNATE_ROOTS": "2"})
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture(scope="module")
def eab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleRig]:
    """A Pebble that requires external account binding (RFC 8555 7.3.4)."""
    rig = start_pebble(tmp_path_factory.mktemp("pebble-eab-life"), **_ports(1),
                       extra_config={"externalAccountBindingRequired": True,
                                     "externalAccountMACKeys": {"kid-1": HMAC}})
    try:
        yield rig
    finally:
        rig.stop()


def conf_for(tmp_path: Path, ca: PebbleRig, domains: str, *, directory: str | None = None,
             bundle: Path | None = None, **extra: Any) -> Path:
    settings: dict[str, Any] = {
        "accountKey": tmp_path / "account.key", "directoryTest": directory or ca.directory_url,
        "caBundle": bundle or ca.ca_bundle, "challengeListen": f"127.0.0.1:{ca.http_port}",
        "keyTypes": "ec", **extra}
    return write_conf(tmp_path, settings, domains)


def _manage_get(ca: PebbleRig, path: str) -> bytes:
    with _no_proxy_opener(ca.ssl_context()).open(f"{ca.pebble_management_url}{path}",
                                                 timeout=5.0) as response:
        data: bytes = response.read()
    return data


def _cn(cert: x509.Certificate, *, issuer: bool = False) -> str:
    name = cert.issuer if issuer else cert.subject
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


# --------------------------------------------------------------------------- lifetimes


def test_a_six_day_certificate_is_not_renewed_at_every_run(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt) -> None:
    conf = conf_for(tmp_path, life, "six.life.test\n")
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 0, first.stderr
    cert = tree(conf)["cert"] / "six.life.test-cert-combined.prime256v1.test.pem"
    info = crypto.read_certificate(cert.read_bytes())
    assert info.not_after - info.not_before < timedelta(days=6.1)
    # The old fixed 15 days would renew a 6-day certificate at every run; half of its
    # lifetime is 3 days away.
    second = run_lematt("--test", "--cron", "--config", conf)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")

    # An explicit reauthorizeDays of 7 renews it at every run: said, with the line.
    with conf.open("a") as fh:
        fh.write("reauthorizeDays = 7\n")
    third = run_lematt("--test", "--config", conf)
    assert third.returncode == 0, third.stderr
    assert "renewed six.life.test (EC)" in third.stdout
    assert f"{conf.resolve()}:7: reauthorizeDays 7 is at least the lifetime of 1 " in (
        third.stderr)
    assert "renewed at every run" in third.stderr


# --------------------------------------------------------------------------- chains


def test_preferred_chain_picks_the_alternate_root(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt) -> None:
    roots = [_cn(x509.load_pem_x509_certificate(_manage_get(life, f"/roots/{n}")))
             for n in range(3)]
    assert len(set(roots)) == 3
    conf = conf_for(tmp_path, life, "chain.life.test\n", preferredChain=roots[2])
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 0, result.stderr
    cert = tree(conf)["cert"] / "chain.life.test-cert-combined.prime256v1.test.pem"
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    assert _cn(chain[-1], issuer=True) == roots[2]
    assert_pair(tree(conf)["key"] / "chain.life.test-key.prime256v1.test.pem", cert)

    # A name no chain has: the default chain (root 0), not a failure.
    other = tmp_path / "other"
    conf2 = conf_for(other, life, "chain2.life.test\n", preferredChain="No Such Root")
    result = run_lematt("--test", "--config", conf2)
    assert result.returncode == 0, result.stderr
    cert2 = tree(conf2)["cert"] / "chain2.life.test-cert-combined.prime256v1.test.pem"
    top = x509.load_pem_x509_certificates(cert2.read_bytes())[-1]
    assert _cn(top, issuer=True) == roots[0]


# --------------------------------------------------------------------------- EAB and ToS


def test_external_account_binding(tmp_path: Path, eab: PebbleRig,
                                  run_lematt: RunLematt) -> None:
    # Missing: one line, exit 2, naming lematt.conf and what to set; the summary says so.
    conf = conf_for(tmp_path, eab, "eab.life.test\n")
    summary = tmp_path / "summary.json"
    missing = run_lematt("--test", "--config", conf, "--json", summary)
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith(f"lematt: {conf.resolve()}: the CA at {eab.directory_url} requires "
                           "external account binding: set eabKid and eabHmacKey")
    assert json.loads(summary.read_text())["failure"]["kind"] == "config"
    assert not (tmp_path / "account.key.accounts.json").exists()

    # A key the CA does not have: its refusal, in one line, exit 1.
    wrong = conf_for(tmp_path, eab, "eab.life.test\n", eabKid="kid-1",
                     eabHmacKey=HMAC[::-1])
    refused = run_lematt("--test", "--config", wrong)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("lematt: registering the ACME account: the CA answered")
    assert not (tmp_path / "account.key.accounts.json").exists()

    # The right one, from a file: registered, and the certificate issued.
    (tmp_path / "eab.hmac").write_text(HMAC + "\n")
    right = conf_for(tmp_path, eab, "eab.life.test\n", eabKid="kid-1",
                     eabHmacKeyFile=tmp_path / "eab.hmac")
    ok = run_lematt("--test", "--config", right)
    assert ok.returncode == 0, ok.stderr
    assert "registered the ACME account key" in ok.stdout
    assert_pair(tree(right)["key"] / "eab.life.test-key.prime256v1.test.pem",
                tree(right)["cert"] / "eab.life.test-cert-combined.prime256v1.test.pem")

    # A crash between registering and remembering the URL (the book lost): the next run
    # finds the account again through newAccount and carries on.
    (tmp_path / "account.key.accounts.json").unlink()
    with right.open("a") as fh:
        fh.write("reauthorizeDays = 36500\n")
    again = run_lematt("--test", "--config", right)
    assert again.returncode == 0, again.stderr
    assert "renewed eab.life.test (EC)" in again.stdout


def test_terms_of_service_are_agreed_only_when_configured(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt) -> None:
    tos = json.loads(_no_proxy_opener(life.ssl_context()).open(
        life.directory_url, timeout=5.0).read())["meta"]["termsOfService"]
    conf = conf_for(tmp_path, life, "tos.life.test\n", agreeTermsOfService="no")
    refused = run_lematt("--test", "--config", conf)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert f"asks new accounts to agree to its terms of service ({tos})" in line
    assert line.endswith("read them and set agreeTermsOfService: yes")
    assert f"{conf.resolve()}:7:" in line
    agreed = run_lematt("--test", "--config", conf_for(tmp_path, life, "tos.life.test\n"))
    assert agreed.returncode == 0, agreed.stderr
    assert f"agreed to the CA's terms of service at {tos}" in agreed.stdout


# --------------------------------------------------------------------------- revoke


def _serial(cert_path: Path) -> str:
    return format(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "x")


def _status(ca: PebbleRig, cert_path: Path) -> str:
    data = json.loads(_manage_get(ca, f"/cert-status-by-serial/{_serial(cert_path)}"))
    return str(data["Status"])


def test_revoke_then_the_next_run_renews_with_a_new_key(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt) -> None:
    conf = conf_for(tmp_path, life, "rev.life.test www\nkeep.life.test\n", keyTypes="rsa ec")
    assert run_lematt("--test", "--config", conf).returncode == 0
    t = tree(conf)
    stem = "rev.life.test_www.rev.life.test"
    ec_cert = t["cert"] / f"{stem}-cert-combined.prime256v1.test.pem"
    ec_key = t["key"] / f"{stem}-key.prime256v1.test.pem"
    rsa_cert = t["cert"] / f"{stem}-cert-combined.rsa2048.test.pem"
    old_key = ec_key.read_bytes()

    unknown = run_lematt("revoke", "nope.life.test", "--test", "--config", conf)
    assert unknown.returncode == 2 and "nope.life.test: on no line" in unknown.stderr

    # Any name of the line; only the EC certificate.
    done = run_lematt("--test", "revoke", "www.rev.life.test", "--reason", "keyCompromise",
                      "--key-type", "ec", "--config", conf)
    assert done.returncode == 0, done.stderr
    assert "revoked rev.life.test (EC) (keyCompromise)" in done.stdout
    assert _status(life, ec_cert) == "Revoked"
    assert _status(life, rsa_cert) == "Valid"

    after = run_lematt("--test", "--config", conf)
    assert after.returncode == 0, after.stderr
    assert "due: rev.life.test (EC): revoked (keyCompromise)" in after.stdout
    assert after.stdout.count("renewed") == 1
    assert "renewed rev.life.test (EC)" in after.stdout and "(new key)" in after.stdout
    assert ec_key.read_bytes() != old_key
    assert_pair(ec_key, ec_cert)
    assert _status(life, ec_cert) == "Valid"
    quiet = run_lematt("--test", "--cron", "--config", conf)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_a_revocation_the_ca_refuses_leaves_the_pair_alone(
        tmp_path: Path, life: PebbleRig, eab: PebbleRig, run_lematt: RunLematt) -> None:
    conf = conf_for(tmp_path, life, "refuse.life.test\n")
    assert run_lematt("--test", "--config", conf).returncode == 0
    # The same tree and key pointed at a CA that did not issue the certificate (a run there
    # registers the key, with EAB, and orders only the new line): it refuses to revoke it.
    other = conf_for(tmp_path, eab, "refuse.life.test\nother.life.test\n", eabKid="kid-1",
                     eabHmacKey=HMAC)
    there = run_lematt("--test", "--config", other)
    assert there.returncode == 0 and there.stdout.count("renewed") == 1, there.stderr
    refused = run_lematt("revoke", "refuse.life.test", "--test", "--config", other)
    assert refused.returncode == 1
    assert "FAILED: refuse.life.test (EC): revoking the certificate" in refused.stderr
    back = conf_for(tmp_path, life, "refuse.life.test\n")
    quiet = run_lematt("--test", "--cron", "--config", back)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


# --------------------------------------------------------------------------- holding a request


class Hold:
    """A front rule that holds one kind of request: ``after_ca`` forwards it first (the CA
    applies it, its answer never reaches lematt), otherwise the CA never sees it."""

    def __init__(self, method: str, name: str, *, after_ca: bool) -> None:
        self.method, self.name, self.after_ca = method, name, after_ca
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self, front: CaFront, request: Request) -> Reply | None:
        if request.method != self.method or request.path != directory_path(front, self.name):
            return None
        if self.after_ca:
            front.forward(request)
        self.reached.set()
        self.release.wait(60)
        return Reply(503, {"Retry-After": "3600"})


@contextlib.contextmanager
def killed_at(hold: Hold, *argv: str | os.PathLike[str]) -> Iterator[None]:
    """Run ``lematt argv``, SIGKILL it (its whole group) once ``hold`` holds its request."""
    proc = subprocess.Popen([sys.executable, "-m", "lematt", *map(str, argv)], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert hold.reached.wait(120), proc.communicate(timeout=60)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        yield
    finally:
        hold.release.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


@pytest.fixture
def front_on(tmp_path: Path) -> Iterator[Callable[..., CaFront]]:
    fronts: list[CaFront] = []

    def start(ca: PebbleRig, rules: list[Any]) -> CaFront:
        front = CaFront(ca.directory_url, ca.ca_bundle, tmp_path / f"front{len(fronts)}",
                        port=14640 + len(fronts) + PORT_OFFSET, rules=rules)
        fronts.append(front.__enter__())
        return front

    yield start
    for front in fronts:
        front.__exit__(None, None, None)


def test_a_revocation_killed_while_the_ca_answers_is_still_renewed(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt,
        front_on: Callable[..., CaFront]) -> None:
    hold = Hold("POST", "revokeCert", after_ca=True)
    front = front_on(life, [hold])
    conf = conf_for(tmp_path, life, "kill.life.test\n", directory=front.directory_url,
                    bundle=front.ca_bundle)
    assert run_lematt("--test", "--config", conf).returncode == 0
    cert = tree(conf)["cert"] / "kill.life.test-cert-combined.prime256v1.test.pem"
    with killed_at(hold, "revoke", "kill.life.test", "--test", "--config", conf):
        assert _status(life, cert) == "Revoked"
    after = run_lematt("--test", "--config", conf)
    assert after.returncode == 0, after.stderr
    assert "due: kill.life.test (EC): revoked (unspecified)" in after.stdout
    assert _status(life, cert) == "Valid"


# --------------------------------------------------------------------------- account


def _book(conf: Path) -> dict[str, dict[str, str]]:
    data = json.loads((conf.parent / "account.key.accounts.json").read_text())
    return data["accounts"]  # type: ignore[no-any-return]


def _thumbprint(conf: Path) -> str:
    return thumbprint(crypto.load_private_key((conf.parent / "account.key").read_bytes()))


def test_account_show_update_contact_rollover_and_deactivate(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt) -> None:
    conf = conf_for(tmp_path, life, "acct.life.test\n", contactEmail="one@example.com")
    # No key yet: said, and nothing created (no command registers an account).
    none_yet = run_lematt("account", "update-contact", "--test", "--config", conf)
    assert none_yet.returncode == 1 and "does not exist yet" in none_yet.stderr
    assert not (tmp_path / "account.key").exists()
    assert run_lematt("--test", "--config", conf).returncode == 0
    url = _book(conf)[life.directory_url]["url"]

    show = run_lematt("--test", "account", "show", "--config", conf)
    assert show.returncode == 0, show.stderr
    assert f"account: {url}" in show.stdout and "status: valid" in show.stdout
    assert "contact: mailto:one@example.com" in show.stdout
    assert f"thumbprint {_thumbprint(conf)}" in show.stdout

    bad = run_lematt("account", "update-contact", "not-an-address", "--test", "--config", conf)
    assert bad.returncode == 2
    update = run_lematt("account", "update-contact", "two@example.com", "three@example.com",
                        "--test", "--config", conf)
    assert update.returncode == 0, update.stderr
    show = run_lematt("account", "show", "--test", "--config", conf)
    assert "contact: mailto:two@example.com, mailto:three@example.com" in show.stdout

    old_print = _thumbprint(conf)
    roll = run_lematt("account", "rollover", "--test", "--config", conf)
    assert roll.returncode == 0, roll.stderr
    new_print = _thumbprint(conf)
    assert new_print != old_print and f"thumbprint {new_print}" in roll.stdout
    assert _book(conf)[life.directory_url] == {"url": url, "thumbprint": new_print}
    assert not (tmp_path / "account.key.rollover").exists()
    assert (os.stat(tmp_path / "account.key").st_mode & 0o777) == 0o600
    with conf.open("a") as fh:
        fh.write("reauthorizeDays = 36500\n")
    renew = run_lematt("--test", "--config", conf)
    assert renew.returncode == 0, renew.stderr
    assert "registered" not in renew.stdout  # the same account, signed with the new key

    refused = run_lematt("account", "deactivate", "--test", "--config", conf)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    gone = run_lematt("account", "deactivate", "--yes", "--test", "--config", conf)
    assert gone.returncode == 0, gone.stderr
    assert f"the account {url} is deactivated" in gone.stdout
    assert life.directory_url not in _book(conf)
    after = run_lematt("--test", "--config", conf)
    assert after.returncode == 1
    # (Besides the reauthorizeDays warning) one line: the CA refuses the deactivated key.
    (line,) = [t for t in after.stderr.strip().splitlines() if "warning:" not in t]
    assert line.startswith("lematt: registering the ACME account") and "deactivated" in line


@pytest.mark.parametrize("after_ca", [True, False], ids=["applied", "never-sent"])
def test_a_rollover_killed_in_flight_is_settled_by_the_next_run(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt,
        front_on: Callable[..., CaFront], after_ca: bool) -> None:
    hold = Hold("POST", "keyChange", after_ca=after_ca)
    front = front_on(life, [hold])
    conf = conf_for(tmp_path, life, "roll.life.test\n", directory=front.directory_url,
                    bundle=front.ca_bundle)
    assert run_lematt("--test", "--config", conf).returncode == 0
    old_key = (tmp_path / "account.key").read_bytes()
    with killed_at(hold, "account", "rollover", "--test", "--config", conf):
        side = tmp_path / "account.key.rollover"
        assert side.exists() and (side.stat().st_mode & 0o777) == 0o600
        assert (tmp_path / "account.key").read_bytes() == old_key
    pending = json.loads((tmp_path / "account.key.rollover").read_text())

    with conf.open("a") as fh:
        fh.write("reauthorizeDays = 36500\n")
    after = run_lematt("--test", "--config", conf)
    assert after.returncode == 0, after.stderr
    assert not (tmp_path / "account.key.rollover").exists()
    key_now = (tmp_path / "account.key").read_bytes()
    if after_ca:
        assert "finished the account key rollover an earlier run started" in after.stdout
        assert key_now == pending["key"].encode()
    else:
        assert "never reached" in after.stdout
        assert key_now == old_key
    assert "renewed roll.life.test (EC)" in after.stdout
    assert "registered" not in after.stdout  # still the same account


def test_a_refused_rollover_keeps_the_key_and_a_foreign_side_file_stops_the_run(
        tmp_path: Path, life: PebbleRig, run_lematt: RunLematt,
        front_on: Callable[..., CaFront]) -> None:
    def refuse(front: CaFront, request: Request) -> Reply | None:
        if request.method == "POST" and request.path == directory_path(front, "keyChange"):
            problem = {"type": "urn:ietf:params:acme:error:unauthorized",
                       "detail": "key change refused", "status": 403}
            return Reply(403, {"Content-Type": "application/problem+json"},
                         json.dumps(problem).encode())
        return None

    front = front_on(life, [refuse])
    conf = conf_for(tmp_path, life, "refused.life.test\n", directory=front.directory_url,
                    bundle=front.ca_bundle)
    assert run_lematt("--test", "--config", conf).returncode == 0
    old_key = (tmp_path / "account.key").read_bytes()
    refused = run_lematt("account", "rollover", "--test", "--config", conf)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "unauthorized" in line and "key change refused" in line
    assert (tmp_path / "account.key").read_bytes() == old_key
    assert not (tmp_path / "account.key.rollover").exists()

    # A side file lematt did not write: nothing is signed until a person looks at it.
    (tmp_path / "account.key.rollover").write_text("not json")
    with conf.open("a") as fh:
        fh.write("reauthorizeDays = 36500\n")
    stopped = run_lematt("--test", "--config", conf)
    assert stopped.returncode == 1
    assert "account.key.rollover is not a rollover record lematt wrote" in stopped.stderr
    assert "renewed" not in stopped.stdout
