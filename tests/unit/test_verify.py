"""Post-deploy verification without a network: the ``verify`` entries as config, which checks
a config asks for, the STARTTLS dialogues against scripted replies, the result's JSON. The
connections themselves are in tests/e2e/test_verify.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lematt.cli import main
from lematt.config import Settings, load
from lematt.config.endpoints import Endpoint, parse_endpoint
from lematt.crypto import generate_private_pem, load_private_key
from lematt.model import RunResult, Served, StepOutcome, VerifyResult
from lematt.records import summary
from lematt.store.layout import Layout
from lematt.testing.certs import LocalCA
from lematt.verify.checks import checks_for
from lematt.verify.probe import ProbeError, _imap_starttls, _smtp_starttls

MINIMAL = "[config]\naccountKey: account.key\nchallengeDropDir: challenges\n"


@pytest.mark.parametrize(("entry", "expected"), [
    ("https://www.example.com", Endpoint("https", "www.example.com", 443)),
    ("HTTPS://WWW.Example.com:8443/", Endpoint("https", "www.example.com", 8443)),
    ("tls://mail.example.com:993", Endpoint("tls", "mail.example.com", 993)),
    ("smtp://mail.example.com", Endpoint("smtp", "mail.example.com", 25)),
    ("smtp://mail.example.com:587", Endpoint("smtp", "mail.example.com", 587)),
    ("imap://localhost", Endpoint("imap", "localhost", 143)),
    ("https://[::1]:8443", Endpoint("https", "::1", 8443)),
    ({"connect": "10.0.0.5:443", "name": "WWW.example.com"},
     Endpoint("tls", "10.0.0.5", 443, "www.example.com")),
    ({"connect": "backend:25", "scheme": "smtp"}, Endpoint("smtp", "backend", 25)),
])
def test_endpoint_forms(entry: object, expected: Endpoint) -> None:
    assert parse_endpoint(entry) == expected


@pytest.mark.parametrize(("entry", "says"), [
    ("ftp://x.example.com:21", "scheme 'ftp'"),
    ("www.example.com", "not an endpoint URL"),
    ("tls://x.example.com", "needs a port"),
    ("https://x.example.com:0", "port 0"),
    ("https://x.example.com:65536", "port 65536"),
    ("https://x.example.com/path", "nothing after the port"),
    ("https://user@x.example.com", "HOST[:PORT]"),
    ("https://x.example.com;reboot", "HOST[:PORT]"),
    ("https://-x.example.com", "not a host name"),
    ("https://::1", "HOST[:PORT]"),
    ("https://[fe80::zz]", "HOST[:PORT]"),
    ({"connect": "10.0.0.5:443", "name": "$(reboot).example.com"}, "not a valid DNS name"),
    ({"connect": "10.0.0.5:443", "name": "*.example.com"}, "not a valid DNS name"),
    ({"name": "www.example.com"}, "needs 'connect'"),
    ({"connect": "10.0.0.5:443", "via": "x"}, "unknown key 'via'"),
    ({"connect": "10.0.0.5:443", "scheme": "pop3"}, "scheme 'pop3'"),
    (443, "is not an endpoint"),
])
def test_bad_endpoints_say_what_is_wrong(entry: object, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(entry)
    assert says in str(info.value)


def write_conf(tmp_path: Path, actions: str, name: str = "actions.conf",
               domains: str = "www.example.com\nmail.example.com\n") -> Path:
    (tmp_path / "lematt.conf").write_text(MINIMAL)
    (tmp_path / "domains").write_text(domains)
    (tmp_path / name).write_text(actions)
    return tmp_path / "lematt.conf"


def test_verify_lists_in_ini_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "ini").mkdir()
    ini = load(write_conf(tmp_path / "ini",
                          '[default]\nupdate: ["true"]\nverify: ["https://www.example.com", '
                          '{"connect": "10.0.0.5:25", "name": "mail.example.com", '
                          '"scheme": "smtp"}]\n'))
    (tmp_path / "yaml").mkdir()
    yaml = load(write_conf(tmp_path / "yaml", "default:\n  update: ['true']\n  verify:\n"
                           "    - https://www.example.com\n"
                           "    - connect: 10.0.0.5:25\n      name: mail.example.com\n"
                           "      scheme: smtp\n", name="actions.yaml"))
    for config in (ini, yaml):
        assert config.actions.default is not None
        assert config.actions.default.verify == (
            Endpoint("https", "www.example.com", 443),
            Endpoint("smtp", "10.0.0.5", 25, "mail.example.com"))


@pytest.mark.parametrize(("actions", "name", "line", "says"), [
    ('[default]\nupdate: ["true"]\nverify: ["gopher://x.example.com"]\n', "actions.conf", 3,
     "verify in [default]: scheme 'gopher'"),
    ('[default]\nverify: "https://x.example.com"\n', "actions.conf", 2,
     "expected a list of endpoints"),
    ('[default]\nverify: [https://x.example.com]\n', "actions.conf", 2, "not valid JSON"),
    ("every:\n  verify:\n    - https://x.example.com\n    - connect: 10.0.0.5:443\n"
     "      name: a;b.example.com\n", "actions.yaml", 4, "not a valid DNS name"),
])
def test_bad_verify_entry_is_a_config_error_with_file_and_line(
        tmp_path: Path, actions: str, name: str, line: int, says: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, actions, name)
    # Both the run and the command stop before anything happens, with exit status 2.
    for argv in (["--test", "--config", str(conf)],
                 ["--test", "verify", "--config", str(conf)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name}:{line}: " in err and says in err
        assert len(err.strip().splitlines()) == 1


def test_verify_without_endpoints_is_a_config_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, '[default]\nupdate: ["true"]\n')
    assert main(["--test", "verify", "--config", str(conf)]) == 2
    assert "add a 'verify' list" in capsys.readouterr().err


def store_pair(layout: Layout, config: Any, name: str, key_type: str) -> None:
    line = next(li for li in config.lines if name in li.names)
    path = layout.paths(line, key_type).cert
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    key = load_private_key(generate_private_pem(key_type, curve="prime256v1"))
    path.write_bytes(LocalCA().issue(key, line.names, now, now + timedelta(days=9)))


def test_checks_per_line_key_type_and_endpoint(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, (
        '[default]\nupdate: ["true"]\nverify: ["https://web.example.net", '
        '{"connect": "10.0.0.5:993", "name": "mail.example.com"}]\n'
        '[other]\ndomains: mail.example.com\nverify: ["tls://other.example.net:993"]\n'),
        domains="www.example.com\nmail.example.com\n")
    config = load(conf)
    layout = Layout(config.settings, test=True)
    store_pair(layout, config, "www.example.com", "rsa")
    checks = checks_for(config.actions, config.lines, ("rsa", "ec"), layout,
                        lambda s: s.name == "default")
    # mail.example.com maps to [other] only; the backend entry names mail, so www's line
    # is not checked there: only www on the web endpoint, for both key types.
    assert [(str(c.endpoint), c.name, c.key_type) for c in checks] == [
        ("https://web.example.net:443", "www.example.com", "rsa"),
        ("https://web.example.net:443", "www.example.com", "ec")]
    assert checks[0].expected is not None and len(checks[0].fingerprint) == 32
    assert checks[1].expected is None and "run lematt first" in str(checks[1].problem)
    every = checks_for(config.actions, config.lines, ("ec",), layout, lambda s: True)
    assert [(str(c.endpoint), c.name) for c in every] == [
        ("https://web.example.net:443", "www.example.com"),
        ("tls://other.example.net:993", "mail.example.com")]


class FakeWriter:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data

    def get_extra_info(self, name: str) -> Any:
        return ("192.0.2.7", 40000) if name == "sockname" else None


def dialogue(replies: bytes, starttls: Any) -> tuple[bytes, BaseException | None]:
    async def go() -> tuple[bytes, BaseException | None]:
        reader = asyncio.StreamReader(limit=4096)
        reader.feed_data(replies)
        reader.feed_eof()
        writer = FakeWriter()
        try:
            await starttls(reader, writer)
        except ProbeError as exc:
            return writer.sent, exc
        return writer.sent, None

    return asyncio.run(go())


def test_smtp_starttls_dialogue() -> None:
    sent, error = dialogue(b"220-first\r\n220 mx ready\r\n250-mx\r\n250-SIZE 10\r\n"
                           b"250 STARTTLS\r\n220 go ahead\r\n", _smtp_starttls)
    assert error is None and sent == b"EHLO [192.0.2.7]\r\nSTARTTLS\r\n"
    sent, error = dialogue(b"220 mx\r\n250-mx\r\n250 8BITMIME\r\n", _smtp_starttls)
    assert "does not offer STARTTLS" in str(error) and b"STARTTLS\r\n" not in sent
    _, error = dialogue(b"554 go away\x1b[31m\r\n", _smtp_starttls)
    assert "554 go away\\x1b[31m" in str(error)  # the server's text, escaped
    _, error = dialogue(b"220 mx\r\n", _smtp_starttls)
    assert "closed the connection before STARTTLS" in str(error)
    _, error = dialogue(b"220-x\r\n" * 200, _smtp_starttls)
    assert "more than 100 lines" in str(error)


def test_imap_starttls_dialogue() -> None:
    sent, error = dialogue(b"* OK ready\r\n* BYE not yet\r\nL1 OK begin\r\n", _imap_starttls)
    assert error is None and sent == b"L1 STARTTLS\r\n"
    _, error = dialogue(b"* OK ready\r\nL1 NO not here\r\n", _imap_starttls)
    assert "L1 NO not here" in str(error)
    _, error = dialogue(b"220 an SMTP server\r\n", _imap_starttls)
    assert "not an IMAP greeting" in str(error)


def test_result_lines_and_json() -> None:
    old = Served("1a", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    new = Served("2b", datetime(2026, 4, 2, 3, 4, 5, tzinfo=UTC))
    miss = VerifyResult("https://h:443", "www.example.com", "ec", False, new, old)
    assert miss.describe() == (
        "https://h:443 for www.example.com (EC): expected serial 2b, notAfter "
        "2026-04-02 03:04:05Z; serves serial 1a, notAfter 2026-01-02 03:04:05Z")
    down = VerifyResult("https://h:443", "www.example.com", "rsa", False, new,
                        error="cannot connect: Connection refused")
    assert down.describe().endswith("serial 2b, notAfter 2026-04-02 03:04:05Z; cannot "
                                    "connect: Connection refused")
    result = RunResult(steps=[StepOutcome("default", "verify", "local", "x", None, miss),
                              StepOutcome("default", "update", "local", "true")])
    actions = summary.document(result, "test", 1)["actions"]
    assert actions[0]["verify"] == {
        "endpoint": "https://h:443", "name": "www.example.com", "key_type": "ec",
        "matched": False, "expected": {"serial": "2b", "not_after": "2026-04-02T03:04:05+00:00"},
        "served": {"serial": "1a", "not_after": "2026-01-02T03:04:05+00:00"}, "error": None}
    assert "verify" not in actions[1]


def test_settings_verify_timeout_default() -> None:
    assert Settings(conf_dir=Path("c"), account_key=Path("a")).verify_timeout == 10.0


def test_a_check_is_tried_again_until_the_endpoint_serves_the_stored_leaf(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from lematt.crypto import leaf_der
    from lematt.verify import checks as checks_mod

    conf = write_conf(tmp_path, '[default]\nupdate: ["true"]\nverify: ["https://web.test"]\n',
                      domains="www.example.com\n")
    config = load(conf)
    layout = Layout(config.settings, test=True)
    store_pair(layout, config, "www.example.com", "ec")
    (check,) = checks_for(config.actions, config.lines, ("ec",), layout, lambda s: True)
    stored_der = leaf_der(layout.paths(config.lines[0], "ec").cert.read_bytes())
    now = datetime.now(UTC)
    old_key = load_private_key(generate_private_pem("ec"))
    old_der = leaf_der(LocalCA().issue(old_key, ("www.example.com",), now, now))
    answers: list[bytes | None] = []

    async def fake_leaf(endpoint: Endpoint, sni: str, key_type: str, timeout: float) -> bytes:
        assert (sni, key_type) == ("www.example.com", "ec") and timeout <= 3
        answer = answers.pop(0) if answers else old_der
        if answer is None:
            raise ProbeError("cannot connect: connection refused")
        return answer

    monkeypatch.setattr(checks_mod, "served_leaf", fake_leaf)
    # Down, then the old certificate, then the new one: a match.
    answers[:] = [None, stored_der]
    (result,) = anyio.run(checks_mod.run_checks, [check], 3.0)
    assert result.matched and result.served == check.expected and not answers
    # The old certificate all along: a mismatch naming what is served, after every try.
    answers[:] = []
    (result,) = anyio.run(checks_mod.run_checks, [check], 0.5)
    assert not result.matched and result.error is None
    assert result.served is not None and result.served != check.expected
    # Down all along: the error, with the tries it took.
    answers[:] = [None] * checks_mod.TRIES
    (result,) = anyio.run(checks_mod.run_checks, [check], 0.5)
    assert not result.matched and result.served is None
    assert result.error is not None and result.error.startswith(
        "cannot connect: connection refused (") and "in 0.5 s)" in result.error
